"""``block_operator``: the Hessian restricted to part of the inputs (one layer), the rest fixed.

``select`` is a function that picks a part of the inputs pytree, ``lambda p: p["layer1"]``
or ``lambda p: (p["w1"], p["b1"])``. It is run once on a copy of the pytree whose leaves are
position markers, which tells which leaves it picked and in what structure (:func:`pick`).
The block operator wraps the full :func:`jaxhvp.hessian_operator`: a product pads the
block's vector with zeros (:func:`merge`), multiplies, and keeps the block's part. Nothing
wraps the user's function, so the kernel cache sees it as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from .. import _eager
from ..operators._blocks import BlockOperator, pick
from ..operators._hessian import HessianOperator, hessian_operator

_NAME = "block_operator"


@dataclasses.dataclass(frozen=True)
class _BlockProduct:
    """``(full, v) -> (P^T H P) v``, as :class:`jaxhvp.operators.BlockOperator` computes it.
    Hashable: it is the static part of the block operator's pytree."""

    positions: tuple[int, ...]
    block_tree: Any  # the block's structure (a PyTreeDef)

    def __call__(self, full: HessianOperator, v: Any) -> Any:
        return BlockOperator(full, self.positions, self.block_tree)._product(v)


def block_operator(
    func: Callable,
    inputs: Any,
    select: Callable,
    *,
    mode: str = "fwd-rev",
    has_aux: bool = False,
    jit: bool = True,
) -> HessianOperator:
    """The Hessian of ``func`` with respect to a part of ``inputs``, the rest held fixed.

    The diagonal block ``P^T H P`` of the Hessian for the block ``b = select(inputs)``: for
    per-layer spectra, pass it to :func:`eigenvalues`, :func:`trace` or :func:`density`. It
    linearizes the full gradient once, as :func:`jaxhvp.hessian_operator` does, and a
    product costs one full Hessian product (the block's vector padded with zeros); the
    vectors, the Lanczos basis and the probes live in the block's smaller space.

    Args:
      func: as in :func:`jaxhvp.hessian_operator`, called on the full inputs.
      inputs: as in :func:`jaxhvp.hessian_operator` (one array, a tuple, or any pytree).
      select: a function picking the block from the inputs, e.g. ``lambda p: p["layer1"]``
        or ``lambda p: (p["w1"], p["b1"])``; it may only index and regroup, not compute.
      mode: as in :func:`jaxhvp.hessian_operator`.
      has_aux: as in :func:`jaxhvp.hessian_operator`.
      jit: as in :func:`jaxhvp.hessian_operator`.

    Returns:
      A :class:`jaxhvp.HessianOperator` whose vectors (and ``grad``) have the structure of
      ``select(inputs)``; ``value`` and ``aux`` are the full function's. A tuple block
      follows the tuple rule (products come back as tuples).

    Raises:
      TypeError: ``select`` is not a function, computes with the arrays, or returns
        something other than leaves of the inputs.
      HVPError: ``select`` picks nothing or picks a leaf twice; and as
        :func:`jaxhvp.hessian_operator`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> import jaxhvp.spectrum
      >>> def loss(p):
      ...     return jnp.sum(p["a"] ** 2 * p["b"][0]) + jnp.sum(p["b"] ** 3)
      >>> params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([3.0])}
      >>> op = jaxhvp.spectrum.block_operator(loss, params, lambda p: p["a"])
      >>> op.as_matrix()  # d^2 loss / d a^2 = 2 b_0 I
      Array([[6., 0.],
             [0., 6.]], dtype=float32)
      >>> jaxhvp.spectrum.eigenvalues(op, key=jax.random.key(0)).values.round(4)
      Array([6.], dtype=float32)
    """
    full = hessian_operator(func, inputs, mode=mode, has_aux=has_aux, jit=jit)
    positions, grad = pick(full.grad, select, _NAME)
    product = _BlockProduct(_eager.Static(positions), jax.tree_util.tree_structure(grad))
    linear = jax.tree_util.Partial(product, full)
    return HessianOperator(full.value, grad, full.aux, linear, full.mode, type(grad) is tuple)
