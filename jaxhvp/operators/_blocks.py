"""Blocks: the part of an operator acting on some leaves of the parameters, the rest fixed.

``select`` is a function that picks a part of the parameters pytree, ``lambda p: p["layer1"]``
or ``lambda p: (p["w1"], p["b1"])``. It is run once on a copy of the pytree whose leaves are
position markers, which tells which leaves it picked and in what structure (:func:`pick`).
A block's product pads its vector with zeros (:func:`merge`), multiplies by the full operator,
and keeps the block's part: ``P^T A P``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._errors import HVPError
from ._base import Operator


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
    except (TypeError, AttributeError, ValueError, KeyError, IndexError) as error:
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


def merge(inputs: Any, positions: tuple[int, ...], block: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(inputs)
    for position, leaf in zip(positions, jax.tree_util.tree_leaves(block)):
        leaves[position] = leaf
    return treedef.unflatten(leaves)


def take(tree: Any, positions: tuple[int, ...], block_tree: Any) -> Any:
    """The leaves of ``tree`` at ``positions``, in the block's structure."""
    leaves = jax.tree_util.tree_leaves(tree)
    return block_tree.unflatten([leaves[i] for i in positions])


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["base"],
    meta_fields=["positions", "block_tree"],
)
@dataclasses.dataclass(frozen=True)
class BlockOperator(Operator):
    """The diagonal block ``P^T A P`` of ``base`` for some of its leaves (``op.block``).

    Its vectors have the block's structure; ``grad`` is the block of the base's gradient and
    ``value`` the base's. A product costs one product of the base.
    """

    base: Operator
    positions: tuple[int, ...]
    block_tree: Any  # the block's structure (a PyTreeDef)

    @property
    def like(self) -> Any:
        return take(self.base.like, self.positions, self.block_tree)

    @property
    def is_tuple(self) -> bool:
        return type(self.like) is tuple

    @property
    def psd(self) -> bool:  # a principal submatrix of a PSD matrix is PSD
        return self.base.psd

    @property
    def value(self) -> Any:
        return self.base.value

    @property
    def grad(self) -> Any:
        grad = self.base.grad
        return None if grad is None else take(grad, self.positions, self.block_tree)

    def _user_function(self) -> Callable | None:
        return self.base._user_function()

    def _data_axes(self) -> tuple[str, ...]:
        return self.base._data_axes()

    def _product(self, v: Any) -> Any:
        return self._restricted(self.base._product, v)

    def _batch_product(self, v: Any, index: jax.Array) -> Any:
        return self._restricted(lambda u: self.base._batch_product(u, index), v)

    def _restricted(self, product: Callable, v: Any) -> Any:
        zeros = jax.tree_util.tree_map(jnp.zeros_like, self.base.like)
        full = product(merge(zeros, self.positions, v))
        return take(full, self.positions, self.block_tree)
