"""``batch_hessian_operator``: the Hessian of a loss averaged over a stack of data batches.

The operator is a plain :class:`jaxhvp.HessianOperator` whose ``linear`` map is a
``jax.tree_util.Partial`` of :class:`_MeanProduct` over ``(params, batches)``: a product is
one ``lax.scan`` over the batches, in their order, summing per-batch Hessian-vector
products and dividing by their number. So it works everywhere a HessianOperator does
(``mv``, ``matmat``, ``as_matrix``, CG, the spectrum estimators), crosses ``jax.jit`` as a
pytree whose arrays are arguments, and holds no per-batch linearisation: each product
re-runs every batch's forward pass (memory of one batch, time of ``num_batches`` products).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .. import _eager
from .._errors import HVPError
from .._inputs import Inputs, as_inputs, is_array
from .._modes import AUTO, MODE_NAMES, MODES, check_callable, resolve_mode, scalar_fn
from .._operator import HessianOperator
from ._blocks import merge, pick

_NAME = "batch_hessian_operator"


@dataclasses.dataclass(frozen=True)
class _MeanProduct:
    """``(params, batches, v) -> mean over batches of H_b v``, for a block or all the params.

    Hashable (the loss by identity, the block by its positions and structure), so operators
    built from the same loss share compiled kernels: it is the static part of the
    operator's pytree.
    """

    loss: Callable
    compose: Callable
    positions: tuple[int, ...] | None  # the block's leaves in the flat params; None: all
    block_tree: Any = None  # the block's structure (a PyTreeDef) when positions is given

    def block(self, params: Any) -> Any:
        if self.positions is None:
            return params
        leaves = jax.tree_util.tree_leaves(params)
        return self.block_tree.unflatten([leaves[i] for i in self.positions])

    def scalar(self, params: Any, batch: Any) -> Callable:
        """The checked scalar function of the block, as the AD compositions take it."""

        def loss_of_block(block: Any) -> Any:
            full = block if self.positions is None else merge(params, self.positions, block)
            return self.loss(full, batch)

        return scalar_fn(loss_of_block, Inputs(self.block(params), False, _NAME), False)

    def __call__(self, params: Any, batches: Any, v: Any) -> Any:
        block = self.block(params)

        def add(total: Any, batch: Any) -> tuple[Any, None]:
            product, _ = self.compose(self.scalar(params, batch), block, v)
            return jax.tree_util.tree_map(jnp.add, total, product), None

        total, _ = lax.scan(add, jax.tree_util.tree_map(jnp.zeros_like, v), batches)
        count = _num_batches(batches)
        return jax.tree_util.tree_map(lambda t: t / count, total)


def batch_hessian_operator(
    loss: Callable,
    params: Any,
    batches: Any,
    *,
    select: Callable | None = None,
    mode: str = "fwd-rev",
    jit: bool = True,
) -> HessianOperator:
    """The Hessian of ``mean_b loss(params, batch_b)`` over a stack of equal-size batches.

    ``batches`` is any pytree whose leaves are stacked on a leading axis of length
    ``num_batches`` (``batches["x"][b]`` is batch ``b``'s inputs). Every product runs one
    ``lax.scan`` over the batches in order (deterministic, compiled once, no Python loop)
    and returns the mean of the per-batch Hessian-vector products: the Hessian of the loss
    on all the data, as PyHessian's data-loader products compute it, with the memory of one
    batch. ``value`` and ``grad`` are the mean loss and gradient.

    Cost per product: ``num_batches`` Hessian-vector products, each re-running its batch's
    forward pass (nothing is kept between products but the parameters and the data).

    Args:
      loss: ``loss(params, batch)`` -> a one-element array. Arrays it reads besides
        ``batch`` are read afresh at every eager product, as by :func:`jaxhvp.hvp`; it is
        part of the operator's static structure (hashed by identity) under ``jax.jit``.
      params: any pytree of floating arrays (passed to ``loss`` as one argument).
      batches: a pytree of arrays, each with the same leading length ``num_batches >= 1``.
      select: optionally, a function picking a block of ``params`` (as in
        :func:`block_operator`): the operator is then that block of the batch Hessian.
      mode: ``"fwd-rev"`` (default), ``"rev-rev"`` or ``"rev-fwd"``, as in
        :func:`jaxhvp.hvp` (not ``"auto"``).
      jit: as in :func:`jaxhvp.hvp`, for ``value`` and ``grad``; eager products of the
        operator run compiled kernels of the same cache.

    Returns:
      A :class:`jaxhvp.HessianOperator` over ``params`` (or the selected block).

    Raises:
      TypeError: ``loss`` is not callable or not hashable; ``params`` or ``batches`` are not
        arrays.
      HVPError: batches with no leaves, a leaf without a leading axis, or leading lengths
        that differ; ``mode="auto"``; invalid ``params`` (as :func:`jaxhvp.hvp`).

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> import jaxhvp.spectrum
      >>> def loss(w, batch):
      ...     x, y = batch
      ...     return jnp.mean((x @ w - y) ** 2)
      >>> x = jnp.arange(24.0).reshape(4, 3, 2) / 10  # 4 batches of 3 examples
      >>> batches = (x, jnp.ones((4, 3)))
      >>> op = jaxhvp.spectrum.batch_hessian_operator(loss, jnp.zeros(2), batches)
      >>> op.as_matrix().round(4)  # the mean over the 4 batches of 2 x_b^T x_b / 3
      Array([[3.3733, 3.5933],
             [3.5933, 3.8333]], dtype=float32)
      >>> jaxhvp.spectrum.eigenvalues(op, key=jax.random.key(0)).values.round(4)
      Array([7.204], dtype=float32)
    """
    check_callable(loss, _NAME)
    try:
        hash(loss)
    except TypeError as error:
        msg = (
            f"The loss given to {_NAME} becomes part of the operator's static structure and "
            f"must be hashable, but {type(loss)} is not. Wrap it in a function: "
            "def loss_fn(params, batch): return model_loss(params, batch)."
        )
        raise TypeError(msg) from error
    compose = resolve_mode(mode, _NAME)
    if compose == AUTO:
        choices = ", ".join(repr(m) for m in MODES)
        msg = (
            f"{_NAME} does not time modes: mode='auto' is not supported. Pick one of "
            f"{choices} (time them once with jaxhvp.hessian_operator(..., mode='auto'))."
        )
        raise HVPError(msg)
    params = as_inputs(params, _NAME).primals
    batches = _check_batches(batches)
    product = _MeanProduct(loss, compose, None)
    if select is not None:
        positions, block = pick(params, select, _NAME)
        product = _MeanProduct(loss, compose, positions, jax.tree_util.tree_structure(block))
    options = (product.positions, product.block_tree)
    value, grad = _eager.call(_value_and_grad, options, loss, (params, batches), jit=jit)
    linear = jax.tree_util.Partial(product, params, batches)
    return HessianOperator(value, grad, None, linear, MODE_NAMES[compose], type(grad) is tuple)


def _value_and_grad(
    loss: Callable, params: Any, batches: Any, positions: tuple[int, ...] | None, block_tree: Any
) -> Any:
    """The mean loss and gradient (of the block) over the batches, by one ``lax.scan``."""
    product = _MeanProduct(loss, MODES["fwd-rev"], positions, block_tree)
    block = product.block(params)

    def add(total: tuple, batch: Any) -> tuple[tuple, None]:
        scalar = product.scalar(params, batch)
        (value, _), grad = jax.value_and_grad(scalar, has_aux=True)(block)
        return jax.tree_util.tree_map(jnp.add, total, (value, grad)), None

    first = jax.tree_util.tree_map(lambda x: x[0], batches)
    value_shape, _ = jax.eval_shape(product.scalar(params, first), block)
    zeros = (jnp.zeros((), value_shape.dtype), jax.tree_util.tree_map(jnp.zeros_like, block))
    total, _ = lax.scan(add, zeros, batches)
    count = _num_batches(batches)
    return jax.tree_util.tree_map(lambda t: t / count, total)


def _num_batches(batches: Any) -> int:
    return jax.tree_util.tree_leaves(batches)[0].shape[0]


def _check_batches(batches: Any) -> Any:
    leaves = jax.tree_util.tree_flatten_with_path(batches)[0]
    if not leaves:
        msg = (
            f"batches given to {_NAME} must hold at least one array (leaves stacked on a "
            f"leading batch axis), but got {batches!r}."
        )
        raise HVPError(msg)
    lengths = {}
    for path, leaf in leaves:
        where = f"batches{jax.tree_util.keystr(path)}"
        if not is_array(leaf):
            msg = (
                f"batches given to {_NAME} must be a pytree of arrays, but {where} has type "
                f"{type(leaf)}. Wrap numbers with jnp.asarray."
            )
            raise TypeError(msg)
        if leaf.ndim < 1:
            msg = (
                f"every leaf of the batches given to {_NAME} needs a leading batch axis, but "
                f"{where} is a scalar. Stack the batches: jnp.stack([batch_0, batch_1, ...])."
            )
            raise HVPError(msg)
        lengths[where] = leaf.shape[0]
    if len(set(lengths.values())) > 1 or 0 in lengths.values():
        msg = (
            f"every leaf of the batches given to {_NAME} must have the same leading length "
            f"num_batches >= 1, but got {lengths}. Stack equal-size batches on axis 0, e.g. "
            "x.reshape(num_batches, batch_size, *x.shape[1:])."
        )
        raise HVPError(msg)
    return jax.tree_util.tree_map(jnp.asarray, batches)
