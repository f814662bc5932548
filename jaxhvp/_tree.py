"""Vector algebra over pytrees: the solvers' vectors keep the parameters' structure and layout.

Inner products and norms accumulate in the widest floating dtype of the leaves (at least
float32), so a bfloat16 leaf does not round the sum; results of ``axpy`` and friends keep
each leaf's own dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

_map = jax.tree_util.tree_map


def signature(tree: Any) -> tuple:
    """``(structure, [(shape, dtype) per leaf])``: what two vector spaces must share."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, [(tuple(jnp.shape(x)), jnp.result_type(x)) for x in leaves]


def accumulator(tree: Any) -> Any:
    """The dtype sums over ``tree`` are taken in: its widest leaf dtype, at least float32."""
    return jnp.promote_types(jnp.result_type(*jax.tree_util.tree_leaves(tree)), jnp.float32)


def vdot(a: Any, b: Any) -> jax.Array:
    """``<a, b>`` summed over every leaf."""
    wide = accumulator(a)
    # elementwise products summed, not jnp.vdot: a contraction over a sharded axis is
    # refused on explicit meshes ("Contracting dimensions are sharded"); a sum reduces
    parts = [
        jnp.sum(x.astype(wide) * y.astype(wide))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    ]
    return sum(parts[1:], parts[0])


def norm(a: Any) -> jax.Array:
    return jnp.sqrt(vdot(a, a))


def add(a: Any, b: Any) -> Any:
    return _map(lambda x, y: (x + y).astype(x.dtype), a, b)


def sub(a: Any, b: Any) -> Any:
    return _map(lambda x, y: (x - y).astype(x.dtype), a, b)


def scale(c: Any, a: Any) -> Any:
    return _map(lambda x: (c * x).astype(x.dtype), a)


def axpy(c: Any, x: Any, y: Any) -> Any:
    """``c * x + y``."""
    return _map(lambda u, w: (c * u + w).astype(w.dtype), x, y)


def where(condition: jax.Array, a: Any, b: Any) -> Any:
    return _map(lambda x, y: jnp.where(condition, x, y), a, b)


def zeros_like(a: Any) -> Any:
    return _map(jnp.zeros_like, a)


def finite(a: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(a)]
    return jnp.all(jnp.stack(leaves))


def stacked_dot(rows: Any, a: Any) -> jax.Array:
    """``(k,)``: ``<rows[i], a>`` for vectors stacked on a leading axis of every leaf."""
    wide = accumulator(a)
    parts = [  # a sum of products, as in vdot
        jnp.sum(r.astype(wide) * x.astype(wide), axis=tuple(range(1, r.ndim)))
        for r, x in zip(jax.tree_util.tree_leaves(rows), jax.tree_util.tree_leaves(a))
    ]
    return sum(parts[1:], parts[0])


def combine(rows: Any, coefficients: jax.Array) -> Any:
    """``sum_i coefficients[i] * rows[i]`` for vectors stacked on a leading axis."""
    return _map(
        lambda r: jnp.tensordot(coefficients.astype(r.dtype), r, axes=1).astype(r.dtype), rows
    )
