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
import jax.numpy as jnp

from .._errors import HVPError
from ..operators._hessian import HessianOperator, hessian_operator, merge

_NAME = "block_operator"


class _Position:
    """Stands in for the leaf at ``index`` while ``select`` runs."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<leaf {self.index}>"


def pick(inputs: Any, select: Callable, fn_name: str) -> tuple[tuple[int, ...], Any]:
    """``(positions, block)``: the flat positions of the leaves ``select`` picks, and them."""
    if not callable(select):
        msg = (
            f"select given to {fn_name} must be a function picking part of the inputs, e.g. "
            f"select=lambda p: p['layer1'], but got {type(select)}."
        )
        raise TypeError(msg)
    leaves, treedef = jax.tree_util.tree_flatten(inputs)
    marked = treedef.unflatten([_Position(i) for i in range(len(leaves))])
    try:
        chosen = select(marked)
    except (TypeError, AttributeError, ValueError) as error:
        msg = (
            f"select given to {fn_name} must only pick parts of the inputs pytree (index, "
            "take attributes, build tuples or dicts of them), not compute with its arrays; "
            f"running it on the inputs' structure raised {type(error).__name__}: {error}."
        )
        raise TypeError(msg) from error
    picked, block_tree = jax.tree_util.tree_flatten(chosen)
    for leaf in picked:
        if not isinstance(leaf, _Position):
            msg = (
                f"select given to {fn_name} must return leaves of the inputs, but it returned "
                f"a {type(leaf)}. Return a part of its argument, e.g. lambda p: p['layer1']."
            )
            raise TypeError(msg)
    positions = tuple(leaf.index for leaf in picked)
    if not positions:
        msg = f"select given to {fn_name} picked no array from the inputs; pick at least one."
        raise HVPError(msg)
    if len(set(positions)) != len(positions):
        msg = (
            f"select given to {fn_name} picked the same leaf more than once (positions "
            f"{positions} in the flattened inputs); pick each array once."
        )
        raise HVPError(msg)
    return positions, block_tree.unflatten([leaves[i] for i in positions])


@dataclasses.dataclass(frozen=True)
class _BlockProduct:
    """``(full, v) -> (P^T H P) v``: the block's vector embedded with zeros, the full product,
    the block's part of it. Hashable: it is the static part of the block operator's pytree."""

    positions: tuple[int, ...]
    block_tree: Any  # the block's structure (a PyTreeDef)

    def pick(self, tree: Any) -> Any:
        leaves = jax.tree_util.tree_leaves(tree)
        return self.block_tree.unflatten([leaves[i] for i in self.positions])

    def __call__(self, full: HessianOperator, v: Any) -> Any:
        zeros = jax.tree_util.tree_map(jnp.zeros_like, full.grad)
        return self.pick(full.linear(merge(zeros, self.positions, v)))


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
      mode, has_aux, jit: as in :func:`jaxhvp.hessian_operator`.

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
    product = _BlockProduct(positions, jax.tree_util.tree_structure(grad))
    linear = jax.tree_util.Partial(product, full)
    return HessianOperator(full.value, grad, full.aux, linear, full.mode, type(grad) is tuple)
