"""``influence``: how much each training example moves the loss on each test example."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _eager, _sharding
from ._errors import HVPError
from ._modes import check_callable
from ._structure import difference
from ._validate import check_choice, check_count
from .linalg._result import SolveInfo
from .linalg._solve import METHODS, Plan, Settings, prepare, run, setup
from .operators import Operator, hessian_operator
from .operators._data import check_batches
from .operators._stream import Stream
from .spectrum._operand import map_probes

_NAME = "influence"


class Influence(NamedTuple):
    """What :func:`influence` returns; a pytree.

    Attributes:
      values: ``(num_test, num_train)``: ``values[i, j] = -grad L(test_i)^T (H + damping
        I)^-1 grad L(train_j)``, the influence of up-weighting training example ``j`` on the
        loss at test example ``i`` (Koh and Liang's ``I_up,loss``): the derivative of the
        test loss in the example's weight. Removing example ``j`` from a training set of
        ``n`` changes the test loss by about ``-values[i, j] / n``: positive values mark
        harmful examples (removing them lowers the test loss), negative ones helpful.
      factors: the influence factors ``(H + damping I)^-1 grad L(test_i)``, in the
        structure of the parameters with a leading axis of length ``num_test``.
      info: the :class:`jaxhvp.SolveInfo` of each test example's solve (each field with a
        leading axis of length ``num_test``).
    """

    values: jax.Array
    factors: Any
    info: SolveInfo


@dataclasses.dataclass(frozen=True)
class _BatchMean:
    """The mean of a per-example loss over a batch: the training objective of one batch.
    Compared by the loss it wraps, so operators built from the same loss share kernels.
    Tuple parameters, which the Hessian operator passes as separate arguments (torch's
    convention), are packed again for ``loss(params, example)``."""

    loss: Callable
    packed: bool = False

    def __call__(self, *args: Any) -> jax.Array:
        *params, batch = args
        params = tuple(params) if self.packed else params[0]
        return jnp.mean(jax.vmap(self.loss, in_axes=(None, 0))(params, batch))


def influence(
    loss: Callable,
    params: Any,
    train: Any,
    test: Any,
    *,
    curvature: Any = "hessian",
    damping: Any = 0.0,
    method: str = "cg",
    batch_size: int | None = None,
    test_batch_size: int | None = None,
    test_loss: Callable | None = None,
    **solve_options: Any,
) -> Influence:
    """The influence of each training example on the loss at each test example.

    For a model trained by minimising the mean of ``loss(params, example)`` over the
    training examples, ``values[i, j] = -grad L(test_i)^T (H + damping I)^-1 grad
    L(train_j)`` (Koh and Liang, 2017), with ``H`` the curvature of the training objective
    at ``params``. The inverse products come from :func:`jaxhvp.solve` (any ``method``, its
    options passed through), one per test example, with the curvature's eigenspace or
    preconditioner computed once. Memory: one batch of ``batch_size`` training examples
    (the products and the gradients stream over them) and ``test_batch_size`` test examples
    at a time; no per-example gradient is ever stored: ``grad L(train_j)^T f`` is a
    forward-mode derivative of the batch's losses along the factor ``f``.

    Args:
      loss: ``loss(params, example) -> scalar`` for one example, e.g. ``example = (x, y)``.
      params: the trained parameters, any pytree of floating arrays.
      train: the training examples, a pytree stacked on a leading axis of every leaf
        (``(x_train, y_train)``).
      test: the test examples, stacked the same way.
      curvature: ``"hessian"`` (default: the Hessian of the mean training loss) or any
        :class:`jaxhvp.Operator` on ``params`` built on the same data, e.g.
        ``jaxhvp.ggn_operator(model, output_loss, params, batches=...)`` for the
        Gauss-Newton matrix (positive semi-definite, the usual choice for networks).
      damping: ``lambda`` in ``H + lambda I``; needed when ``H`` is singular or indefinite.
      method: the :func:`jaxhvp.solve` method: ``"cg"``, ``"minres"``, ``"lissa"``,
        ``"lowrank"``.
      batch_size: training examples per batch for the Hessian's products and the
        influence values; must divide the number of training examples; default all.
      test_batch_size: test examples solved at once (``jax.vmap``); default all.
      test_loss: the loss at the test examples if not ``loss`` (e.g. a margin).
      **solve_options: passed to :func:`jaxhvp.solve`: ``tol``, ``maxiter``,
        ``preconditioner``, ``scale``, ``rank``, ``key``, ...

    Returns:
      An :class:`Influence` ``(values, factors, info)``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> def loss(w, example):  # least squares with a little ridge
      ...     x, y = example
      ...     return 0.5 * (x @ w - y) ** 2 + 0.05 * w @ w
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0]])
      >>> y = jnp.array([1.0, 2.0, 3.0, -5.0])
      >>> w = jnp.linalg.solve(x.T @ x / 4 + 0.1 * jnp.eye(2), x.T @ y / 4)  # the minimiser
      >>> result = jaxhvp.influence(loss, w, (x, y), (x[:1], y[:1]))
      >>> result.values.shape
      (1, 4)
      >>> int(jnp.argmax(result.values[0]))  # the most harmful example for the first one
      3
      >>> int(jnp.argmin(result.values[0]))  # the most helpful: the example itself
      0
    """
    check_callable(loss, _NAME)
    if test_loss is not None:
        check_callable(test_loss, _NAME)
    params = _check_params(params)
    if isinstance(train, Stream) or isinstance(test, Stream):
        msg = (
            f"train and test given to {_NAME} are scanned in one compiled pass, so they "
            "cannot be streamed: give them stacked on a leading axis of every leaf."
        )
        raise HVPError(msg)
    train = check_batches(train, _NAME, "train")
    test = check_batches(test, _NAME, "test")
    num_train = jax.tree_util.tree_leaves(train)[0].shape[0]
    num_test = jax.tree_util.tree_leaves(test)[0].shape[0]
    batch_size = num_train if batch_size is None else check_count(batch_size, "batch_size", _NAME)
    if num_train % batch_size:
        msg = (
            f"batch_size given to {_NAME} must divide the {num_train} training examples (the "
            f"batches are equal), but got {batch_size}. Use a divisor, or drop examples."
        )
        raise HVPError(msg)
    if test_batch_size is not None:
        test_batch_size = min(check_count(test_batch_size, "test_batch_size", _NAME), num_test)
    batches = jax.tree_util.tree_map(lambda x: _sharding.regroup(x, num_train // batch_size), train)
    op = _curvature(curvature, loss, params, batches)
    method = check_choice(method, "method", METHODS, _NAME)
    options = {"tol": 1e-5, "atol": 0.0, "maxiter": None, "preconditioner": None}
    options |= {"scale": None, "rank": None, "key": None}
    unknown = set(solve_options) - set(options)
    if unknown:
        msg = (
            f"{_NAME} passes only the options of jaxhvp.solve, {sorted(options)}, but got "
            f"{sorted(unknown)}."
        )
        raise HVPError(msg)
    options |= solve_options
    plan, settings, extra = prepare(
        op, method, damping, *options.values(), None, _NAME
    )  # fmt: skip
    funcs = (loss, loss if test_loss is None else test_loss)
    if plan.preconditioned == "callable":  # a function: walked with the losses, so cached
        funcs, extra = (*funcs, extra), None
    static = (plan, test_batch_size)
    return _eager.call(_influence, static, funcs, (params, batches, test, op, settings, extra))


def _check_params(params: Any) -> Any:
    """``params`` as JAX arrays (NumPy ones converted), all floating."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or not all(
        isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.floating)
        for x in leaves
    ):
        msg = (
            f"params given to {_NAME} must be a pytree of floating arrays (the trained "
            f"parameters), but got {jax.tree_util.tree_map(lambda x: type(x).__name__, params)}."
        )
        raise HVPError(msg)
    return jax.tree_util.tree_map(jnp.asarray, params)


def _curvature(curvature: Any, loss: Callable, params: Any, batches: Any) -> Operator:
    if isinstance(curvature, str) and curvature == "hessian":
        packed = isinstance(params, tuple)
        return hessian_operator(_BatchMean(loss, packed), params, batches=batches)
    if not isinstance(curvature, Operator):
        msg = (
            f"curvature given to {_NAME} must be 'hessian' or a jaxhvp operator on the "
            "parameters (e.g. jaxhvp.ggn_operator(model, output_loss, params, batches=...)), "
            f"but got {curvature!r}."
        )
        raise HVPError(msg)
    expected = jax.tree_util.tree_structure(params)
    if jax.tree_util.tree_structure(curvature.like) != expected:
        msg = (
            f"curvature given to {_NAME} must act on vectors shaped like params, but "
            f"{difference(params, curvature.like, 'params', 'curvature.like')}."
        )
        raise HVPError(msg)
    return curvature


def _influence(
    funcs: tuple[Callable, Callable],
    params: Any,
    batches: Any,
    test: Any,
    op: Operator,
    settings: Settings,
    extra: Any,
    plan: Plan,
    test_batch_size: int | None,
) -> Influence:
    train_loss, test_loss = funcs[:2]
    extra = funcs[2] if plan.preconditioned == "callable" else extra
    prepared = setup(op, plan, settings, extra)  # once for every test example

    def factor(example: Any) -> tuple[Any, SolveInfo]:
        gradient = jax.grad(test_loss)(params, example)
        gradient = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), gradient, params)
        return run(op, plan, settings, prepared, gradient, None)

    factors, info = map_probes(factor, test, test_batch_size)

    def batch_values(carry: None, batch: Any) -> tuple[None, jax.Array]:
        losses = jax.vmap(train_loss, in_axes=(None, 0))
        _, along = jax.linearize(lambda p: losses(p, batch), params)
        return carry, jax.vmap(along)(factors)  # (num_test, batch_size)

    batches = _sharding.gather_leading(batches)  # scanned: whole on every device
    _, values = lax.scan(batch_values, None, batches)  # (num_batches, num_test, batch_size)
    values = -jnp.moveaxis(values, 0, 1).reshape(values.shape[1], -1)
    return Influence(values, factors, info)
