"""``hessian_operator``: the Hessian at a point, linearized once, as a reusable operator."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .. import _eager, _sharding
from .._errors import HVPError
from .._inputs import Inputs, as_inputs
from .._modes import AUTO, MODE_NAMES, MODES, check_callable, resolve_mode, scalar_fn
from ._base import Operator
from ._blocks import merge, take
from ._data import NOT_SPLIT, Split, check_batches, one_batch, reduce_batches, split_of
from ._stream import Stream, placement, streamed

_NAME = "hessian_operator"


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["value", "grad", "aux", "linear"],
    meta_fields=["mode", "is_tuple"],
)
@dataclasses.dataclass(frozen=True)
class HessianOperator(Operator):
    """The Hessian of a scalar function at a point, as a symmetric linear operator.

    Built by :func:`hessian_operator`. A pytree: it can be returned from and passed into
    jit-compiled functions, carried through ``lax`` loops, and used as the ``A`` of
    ``jax.scipy.sparse.linalg.cg``. Vectors have the structure of the ``inputs`` it was built
    at (a tuple for tuple inputs, as in :func:`jaxhvp.hvp`).

    Attributes:
      value: the function's output at the point, as it returned it.
      grad: the gradient at the point, with the structure of the inputs.
      aux: the auxiliary output with ``has_aux=True``, else ``None``.
      linear: the linearized map ``v -> H v``; it holds the residuals of the linearization.
      mode: the AD composition it was linearized with.
    """

    value: Any
    grad: Any
    aux: Any
    linear: Callable
    mode: str
    is_tuple: bool

    @property
    def like(self) -> Any:
        return self.grad

    def _product(self, v: Any) -> Any:
        return self.linear(v)

    def _batch_product(self, v: Any, index: jax.Array) -> Any:
        product = getattr(self.linear, "func", None)
        if not isinstance(product, MeanProduct):
            return self.linear(v)
        params, batches = self.linear.args
        return product.one_batch(params, batches, v, index)

    def _with_batches(self, batches: Any, index: int) -> HessianOperator:
        """The same operator over other batches of the same structure (a stream's)."""
        params, _ = self.linear.args
        linear = jax.tree_util.Partial(self.linear.func, params, batches)
        return dataclasses.replace(self, linear=linear)

    def _user_function(self) -> Callable | None:
        product = getattr(self.linear, "func", None)  # over batches: Partial(MeanProduct)
        return product.loss if isinstance(product, MeanProduct) else None

    def _data_axes(self) -> tuple[str, ...]:
        product = getattr(self.linear, "func", None)
        return product.split.axes if isinstance(product, MeanProduct) else ()


def hessian_operator(
    func: Callable,
    inputs: Any,
    *,
    batches: Any = None,
    data_axis: Any = None,
    mode: str = "fwd-rev",
    has_aux: bool = False,
    jit: bool = True,
) -> HessianOperator:
    """Linearizes the gradient of ``func`` once at ``inputs``; products then reuse it.

    Each product ``op(v)`` runs only the linear part (the tangent or cotangent sweep): the
    function's primal pass and the residuals it needs are computed once, here. Like
    ``jax.linearize``, the operator stores those residuals — memory comparable to one
    gradient evaluation's activations — for as long as it lives.

    Args:
      func: as in :func:`jaxhvp.hvp`; with ``has_aux=True`` it returns ``(output, aux)``.
      inputs: as in :func:`jaxhvp.hvp` (one array, a tuple, or any pytree).
      batches: optionally, data stacked on a leading axis of every leaf (see
        :doc:`curvature`): ``func(inputs, batch)`` (``func(*inputs, batch)`` for tuple
        inputs) is then averaged over the batches, and each product is one ``lax.scan``
        over them, re-running each batch's forward pass (memory of one batch; nothing is
        linearized ahead). Or :func:`jaxhvp.operators.stream` of a data loader: batches
        read at every product, weighted by their sizes (eager products only). Not with
        ``has_aux`` or ``mode="auto"``.
      data_axis: the mesh axis (or axes) the batches' leading axis is split over, for data
        parallelism (see :doc:`sharding`): each device scans its own batches and one
        ``psum`` per product adds them. Found from the batches' ``NamedSharding`` when they
        are placed on a mesh; give it under ``jax.jit`` on an auto mesh (with
        ``jax.set_mesh``) and inside a ``shard_map`` over that axis (the batches are then
        the local ones).
      mode: ``"fwd-rev"`` (default), ``"rev-rev"``, ``"rev-fwd"`` or ``"auto"``, as in
        :func:`jaxhvp.hvp`; for ``"auto"`` the products of each mode are timed (and the
        choice agreed across processes, as in :func:`jaxhvp.hvp`).
      has_aux: whether ``func`` returns ``(output, aux)``; ``aux`` is ``op.aux``.
      jit: as in :func:`jaxhvp.hvp`.

    Returns:
      A :class:`HessianOperator` with ``value``, ``grad`` and ``aux`` from the same pass.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> op = jaxhvp.hessian_operator(lambda x: (x**3).sum(), jnp.array([1.0, 2.0]))
      >>> op.value, op.grad
      (Array(9., dtype=float32), Array([ 3., 12.], dtype=float32))
      >>> op @ jnp.array([1.0, 1.0])
      Array([ 6., 12.], dtype=float32)
      >>> x, info = jax.scipy.sparse.linalg.cg(op, op.grad)  # Newton direction
      >>> x
      Array([0.5, 1. ], dtype=float32)
    """
    check_callable(func, _NAME)
    if batches is not None:
        if has_aux:
            msg = f"{_NAME} takes has_aux=True only without batches: there is one aux per batch."
            raise HVPError(msg)
        spec = as_inputs(inputs, _NAME)
        return batch_hessian(func, spec, batches, None, mode, jit, _NAME, data_axis)
    if data_axis is not None:
        msg = f"{_NAME} takes data_axis only with batches: it says where the batches live."
        raise HVPError(msg)
    compose = resolve_mode(mode, _NAME)
    if compose == AUTO:
        compose = _eager.AUTO_OPERATOR
    return _eager.call(_linearize, (compose, bool(has_aux)), func, (inputs,), jit=jit)


def _linearize(func: Callable, inputs: Any, compose: Callable, has_aux: bool) -> HessianOperator:
    spec = as_inputs(inputs, _NAME)
    scalar = scalar_fn(func, spec, has_aux)
    # in the primals' explicit shardings, which traced zeros_like can drop (under a lax.cond
    # in an eager call on a jax.set_mesh): products reshard their vectors to those
    zeros = _sharding.tangent_layout(
        jax.tree_util.tree_map(jnp.zeros_like, spec.primals), spec.primals
    )
    _, linear, (grad, (value, aux)) = jax.linearize(
        lambda v: compose(scalar, spec.primals, v), zeros, has_aux=True
    )
    grad = _sharding.match_layout(grad, spec.primals)  # the vectors' layout: the inputs'
    return HessianOperator(value, grad, aux, linear, MODE_NAMES[compose], spec.is_tuple)


# --- over a stack of batches ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MeanProduct:
    """``(params, batches, v) -> mean over batches of H_b v``, for a block or all the params.

    Hashable (the loss by identity, the block by its positions and structure), so operators
    built from the same loss share compiled kernels: it is the static part of the
    operator's pytree.
    """

    loss: Callable
    compose: Callable
    splat: bool  # loss(*params, batch) (the tuple rule) rather than loss(params, batch)
    positions: tuple[int, ...] | None = None  # the block's leaves in the flat params
    block_tree: Any = None  # the block's structure (a PyTreeDef) when positions is given
    split: Split = NOT_SPLIT  # where the batches live

    def block(self, params: Any) -> Any:
        if self.positions is None:
            return params
        return take(params, self.positions, self.block_tree)

    def scalar(self, params: Any, batch: Any) -> Callable:
        """The checked scalar function of the block, as the AD compositions take it."""

        def loss_of_block(block: Any) -> Any:
            full = block if self.positions is None else merge(params, self.positions, block)
            return self.loss(*full, batch) if self.splat else self.loss(full, batch)

        return scalar_fn(loss_of_block, Inputs(self.block(params), False, _NAME), False)

    def one_batch(self, params: Any, batches: Any, v: Any, index: jax.Array) -> Any:
        """The product on batch ``index % num_batches`` alone (one per device if split)."""
        return one_batch(self._on_batch, (params, v), batches, self.split, index)

    def __call__(self, params: Any, batches: Any, v: Any) -> Any:
        return reduce_batches(self._on_batch, (params, v), batches, self.split)

    def _on_batch(self, params_and_v: tuple, batch: Any, _: Any) -> Any:
        params, v = params_and_v
        return self.compose(self.scalar(params, batch), self.block(params), v)[0]


def batch_hessian(
    loss: Callable,
    spec: Inputs,
    batches: Any,
    block: tuple[tuple[int, ...], Any] | None,
    mode: str,
    jit: bool,
    fn_name: str,
    data_axis: Any = None,
) -> HessianOperator:
    """The Hessian of the mean of ``loss`` over ``batches`` (of a block of the params)."""
    try:
        hash(loss)
    except TypeError as error:
        msg = (
            f"The function given to {fn_name} becomes part of the operator's static "
            f"structure and must be hashable, but {type(loss)} is not. Wrap it in a "
            "function: def loss_fn(params, batch): return model_loss(params, batch)."
        )
        raise TypeError(msg) from error
    if isinstance(batches, Stream):
        place = placement(data_axis, spec.primals, fn_name)

        def build(stacked: Any, _: int) -> HessianOperator:
            return batch_hessian(loss, spec, stacked, block, mode, jit, fn_name)

        return streamed(build, batches, "mean", place, fn_name)
    compose = resolve_mode(mode, fn_name)
    if compose == AUTO:
        choices = ", ".join(repr(m) for m in MODES)
        msg = (
            f"{fn_name} with batches does not time modes: mode='auto' is not supported. Pick "
            f"one of {choices} (time them once with jaxhvp.hessian_operator(..., mode='auto'))."
        )
        raise HVPError(msg)
    batches = check_batches(batches, fn_name)
    split = split_of(batches, data_axis, fn_name)
    positions, block_tree = block if block is not None else (None, None)
    positions = None if positions is None else _eager.Static(positions)
    product = MeanProduct(loss, compose, spec.is_tuple, positions, block_tree, split)
    options = (spec.is_tuple, positions, block_tree, split)
    value, grad = _eager.call(_mean_value_and_grad, options, loss, (spec.primals, batches), jit=jit)
    grad = _sharding.match_layout(grad, product.block(spec.primals))
    linear = jax.tree_util.Partial(product, spec.primals, batches)
    return HessianOperator(value, grad, None, linear, MODE_NAMES[compose], type(grad) is tuple)


def _mean_value_and_grad(
    loss: Callable,
    params: Any,
    batches: Any,
    splat: bool,
    positions: Any,
    block_tree: Any,
    split: Split,
) -> Any:
    """The mean loss and gradient (of the block) over the batches, by one ``lax.scan``."""
    product = MeanProduct(loss, MODES["fwd-rev"], splat, positions, block_tree, split)

    def value_and_grad(params: Any, batch: Any, _: Any) -> tuple:
        scalar = product.scalar(params, batch)
        (value, _), grad = jax.value_and_grad(scalar, has_aux=True)(product.block(params))
        return value, grad

    return reduce_batches(value_and_grad, params, batches, split)
