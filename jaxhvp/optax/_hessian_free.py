"""Hessian-free optimisation (Martens, 2010) as an optax transformation.

Each step solves ``(G + lam I) p = -g`` by conjugate gradients (:func:`jaxhvp.solve`),
warm-started from the last step's solution times ``warm_start_decay``, with ``G`` the
Gauss-Newton matrix of the step's batch (default) or its Hessian, then adapts the damping
``lam`` by Levenberg-Marquardt's rule on the reduction ratio
``rho = (f(theta + s) - f(theta)) / (g^T s + s^T G s / 2)`` of the step ``s``:
``lam *= 3/2`` when ``rho < 1/4``, ``lam *= 2/3`` when ``rho > 3/4``. A step that does not
lower the batch's loss (or gives NaN or Inf) is not taken: the update is zero and the
damping rises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .. import _tree
from .._validate import check_choice, check_count
from ..linalg import solve
from ..operators import ggn_operator, hessian_operator
from ._common import (
    check_extra_fn,
    check_objective,
    check_params,
    check_real,
    check_schedule,
    placed_like,
)

_NAME = "hessian_free"
CURVATURES = ("ggn", "hessian")


class HessianFreeState(NamedTuple):
    """The state of :func:`hessian_free`; a pytree.

    Attributes:
      count: the steps taken.
      damping: the current Levenberg-Marquardt damping ``lam``.
      direction: the last CG solution (the next solve's warm start, times the decay).
      ratio: the last step's reduction ratio ``rho`` (``-inf`` if its loss was not finite).
      cg_iterations: the last solve's CG iterations.
      cg_status: the last solve's :class:`jaxhvp.SolveStatus` (an ``INDEFINITE`` Hessian
        stops CG early; the step still uses the last iterate).
    """

    count: jax.Array
    damping: jax.Array
    direction: Any
    ratio: jax.Array
    cg_iterations: jax.Array
    cg_status: jax.Array


def hessian_free(
    learning_rate: Any = 1.0,
    *,
    curvature: str = "ggn",
    damping: float = 1.0,
    min_damping: float = 1e-8,
    adapt_damping: bool = True,
    cg_maxiter: int = 50,
    cg_tol: float = 5e-4,
    warm_start_decay: float = 0.95,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free optimisation: a damped Gauss-Newton (or Newton) step by CG per batch.

    ``update(grads, state, params, ...)`` takes the step's batch through its extra
    arguments: for ``curvature="ggn"`` (default) ``model_fn=lambda p: model(p, batch)``
    (the outputs) and ``loss_fn=lambda out: loss(out, batch)`` (a scalar of the outputs,
    convex for the GGN to be positive semi-definite: cross-entropy, squared error); for
    ``curvature="hessian"`` ``obj_fn=lambda p: loss(p, batch)``. ``grads`` is the gradient
    of that objective (after whatever comes earlier in an ``optax.chain``). The update is
    ``learning_rate`` times the CG solution (``1.0``: the full damped step, as in Martens).

    The reduction ratio is measured on the batch the step was solved on, so the damping
    cannot see over-fitting to it: use large batches, or a learning rate below 1. Behind
    gradient clipping the predicted reduction uses the clipped gradient and the actual one
    the loss, which lowers the ratio and raises the damping: it is best used alone.

    Costs per step: up to ``cg_maxiter`` curvature products (each about a forward and a
    backward pass of the batch for the GGN), one more product for the reduction ratio,
    and two evaluations of the loss. Under ``jax.jit`` the number of CG steps is a loop
    bound, not a recompilation.

    Args:
      learning_rate: a number or optax schedule scaling the step.
      curvature: ``"ggn"`` or ``"hessian"``.
      damping: the initial ``lam``.
      min_damping: the damping never falls below this.
      adapt_damping: whether to adapt ``lam`` (Levenberg-Marquardt); if False it stays.
      cg_maxiter: CG steps per update.
      cg_tol: CG's relative residual tolerance.
      warm_start_decay: the last solution, times this, starts the next CG (0: from zero).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxhvp.optax
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]])
      >>> y = jnp.array([1.0, 2.0, 3.0])
      >>> def model(p):
      ...     return x @ p
      >>> def loss(out):
      ...     return 0.5 * jnp.mean((out - y) ** 2)
      >>> opt = jaxhvp.optax.hessian_free(damping=1e-3)
      >>> params = jnp.zeros(2)
      >>> state = opt.init(params)
      >>> for _ in range(3):
      ...     grads = jax.grad(lambda p: loss(model(p)))(params)
      ...     updates, state = opt.update(grads, state, params, model_fn=model, loss_fn=loss)
      ...     params = optax.apply_updates(params, updates)
      >>> bool(jnp.allclose(params, jnp.linalg.lstsq(x, y)[0], atol=1e-3))  # least squares
      True
    """
    learning_rate = check_schedule(learning_rate, "learning_rate", _NAME)
    curvature = check_choice(curvature, "curvature", CURVATURES, _NAME)
    damping = check_real(damping, "damping", _NAME, low=0.0)
    min_damping = check_real(min_damping, "min_damping", _NAME, low=0.0)
    cg_maxiter = check_count(cg_maxiter, "cg_maxiter", _NAME)
    cg_tol = check_real(cg_tol, "cg_tol", _NAME, low=0.0, low_open=True)
    warm_start_decay = check_real(warm_start_decay, "warm_start_decay", _NAME, low=0.0, high=1.0)

    def init(params: Any) -> HessianFreeState:
        dtype = _tree.accumulator(params)
        state = HessianFreeState(
            count=jnp.zeros((), jnp.int32),
            damping=jnp.asarray(damping, dtype),
            direction=_tree.zeros_like(params),
            ratio=jnp.asarray(jnp.nan, dtype),
            cg_iterations=jnp.zeros((), jnp.int32),
            cg_status=jnp.zeros((), jnp.int32),
        )
        return placed_like(params, state)

    def update(
        updates: Any,
        state: HessianFreeState,
        params: Any = None,
        *,
        obj_fn: Callable | None = None,
        model_fn: Callable | None = None,
        loss_fn: Callable | None = None,
        **extra_args: Any,
    ) -> tuple[Any, HessianFreeState]:
        del extra_args
        check_params(params, _NAME)
        objective, op = _curvature(curvature, params, obj_fn, model_fn, loss_fn)
        (like,) = op.like  # the operator's dtypes (weakly typed params are made concrete)
        grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), updates, like)
        start = jax.tree_util.tree_map(
            lambda d, p: (warm_start_decay * d).astype(p.dtype), state.direction, like
        )
        # The operator's vectors are [params] (see _curvature): boxed in and out.
        (direction,), info = solve(
            op,
            [_tree.scale(-1.0, grads)],
            damping=state.damping,
            x0=[start],
            tol=cg_tol,
            maxiter=cg_maxiter,
        )
        rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
        step = _tree.scale(rate, direction)
        predicted = _tree.vdot(grads, step) + 0.5 * _tree.vdot(step, op._product([step])[0])
        before = op.value
        after = objective(_tree.add(params, step))
        decrease = after - before
        ratio = jnp.where(jnp.isfinite(after), decrease / predicted, -jnp.inf)
        taken = jnp.isfinite(after) & (decrease < 0)
        new_damping = state.damping
        if adapt_damping:
            new_damping = jnp.where(ratio < 0.25, 1.5 * state.damping, state.damping)
            new_damping = jnp.where(ratio > 0.75, state.damping * (2 / 3), new_damping)
            new_damping = jnp.maximum(new_damping, min_damping)
        updates = _tree.where(taken, step, _tree.zeros_like(step))
        new_state = HessianFreeState(
            count=optax.safe_int32_increment(state.count),
            damping=new_damping.astype(state.damping.dtype),
            direction=_tree.where(taken, direction, state.direction),
            ratio=ratio.astype(state.ratio.dtype),
            cg_iterations=info.iterations,
            cg_status=info.status,
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)


def _curvature(
    curvature: str, params: Any, obj_fn: Any, model_fn: Any, loss_fn: Any
) -> tuple[Callable, Any]:
    """The step's objective and its curvature operator at ``[params]``: boxed in a list, so
    a tuple of parameters stays one argument (operators apply the tuple rule to tuples)."""
    if curvature == "hessian":
        objective = check_objective(obj_fn, params, _NAME)
        return objective, hessian_operator(lambda box: objective(box[0]), [params])
    model_fn = check_extra_fn(model_fn, "model_fn", _NAME, "lambda p: model(p, batch)")
    loss_fn = check_extra_fn(loss_fn, "loss_fn", _NAME, "lambda out: loss(out, batch)")

    def objective(p: Any) -> jax.Array:
        return loss_fn(model_fn(p))

    return objective, ggn_operator(lambda box: model_fn(box[0]), loss_fn, [params])
