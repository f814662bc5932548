"""``batch_hessian_operator``: the Hessian of a loss averaged over a stack of data batches.

The same operator as ``jaxhvp.hessian_operator(loss, params, batches=batches)`` (which
follows the tuple rule; here ``params`` is always one argument), with ``select`` for a block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from .._inputs import Inputs, as_inputs
from .._modes import check_callable
from ..operators._hessian import HessianOperator, batch_hessian
from ._blocks import pick

_NAME = "batch_hessian_operator"


def batch_hessian_operator(
    loss: Callable,
    params: Any,
    batches: Any,
    *,
    select: Callable | None = None,
    data_axis: Any = None,
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
      data_axis: the mesh axis the batches are split over, as in
        :func:`jaxhvp.hessian_operator` (data parallelism: one ``psum`` per product).
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
    spec = Inputs(as_inputs(params, _NAME).primals, False, _NAME)  # loss(params, batch)
    block = None
    if select is not None:
        positions, chosen = pick(spec.primals, select, _NAME)
        block = (positions, jax.tree_util.tree_structure(chosen))
    return batch_hessian(loss, spec, batches, block, mode, jit, _NAME, data_axis)
