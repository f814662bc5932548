"""The exact diagonal of ``J^T C J`` from the output space, without probes.

``C = sum_k lam_k q_k q_k^T`` (its eigendecomposition) gives ``diag(J^T C J) = sum_k lam_k
(J^T q_k)**2``: one vjp per output. Two ways to pay for them:

* per example (:func:`per_example`), when ``C`` is block-diagonal over the examples (the
  leading axis of the outputs) and the model treats examples independently: the blocks
  ``C_n`` are formed from ``C``'s products with one unit vector per slot of an example (all
  examples at once), and each example's vjps run on that example alone; the cost is the
  outputs of one example in full-batch backward passes, as BackPACK's ``DiagGGNExact``.
  Both conditions are checked on the numbers (a random probe for block-diagonality, each
  example's own outputs against the batch's); if either fails, the full-batch way runs.
* full batch (:func:`full_batch`): ``C`` formed densely and one full-batch vjp per output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._sharding import ravel


def full_batch(model: Callable, apply: Callable, params: Any, batch: Any, key: Any) -> Any:
    """``diag(J^T C J)`` with ``C`` formed densely over all the batch's outputs."""
    f, vjp = jax.vjp(lambda p: model(p, batch), params)
    flat_f, unravel = ravel(f)
    wide = _wide(flat_f.dtype)
    dense = jax.vmap(lambda e: ravel(apply(f, batch, key, unravel(e)))[0])(
        jnp.eye(flat_f.size, dtype=flat_f.dtype)
    ).astype(wide)
    lam, q = jnp.linalg.eigh((dense + dense.T) / 2)

    def add(total: Any, pair: tuple) -> tuple[Any, None]:
        (row,) = vjp(unravel(pair[1].astype(flat_f.dtype)))
        return _grow(total, pair[0], row, wide), None

    return _narrow(lax.scan(add, _zeros(params, wide), (lam, q.T))[0], params)


def examples_of(f_shape: Any, batch: Any) -> int | None:
    """The number of examples if every output leaf and every batch leaf has the same
    leading length (so a batch can be cut into examples), else None."""
    leaves = jax.tree_util.tree_leaves(f_shape) + jax.tree_util.tree_leaves(batch)
    lengths = {x.shape[0] if x.ndim else None for x in leaves}
    return lengths.pop() if len(lengths) == 1 and None not in lengths else None


def per_example(model: Callable, apply: Callable, params: Any, batch: Any, key: Any) -> Any:
    """``diag(J^T C J)`` example by example when that is exact, else :func:`full_batch`."""
    f = model(params, batch)
    leaves, treedef = jax.tree_util.tree_flatten(f)
    count = leaves[0].shape[0]
    sizes = [x.size // count for x in leaves]
    dtype = jnp.result_type(*leaves)
    wide = _wide(dtype)

    def rows(tree: Any, n: int = count) -> jax.Array:  # (n, slots): each example, flattened
        return jnp.concatenate(
            [x.reshape(n, -1).astype(dtype) for x in jax.tree_util.tree_leaves(tree)], axis=1
        )

    def unrows(r: jax.Array, n: int = count) -> Any:
        parts = jnp.split(r, list(_offsets(sizes)), axis=1)
        return treedef.unflatten(
            [p.reshape((n, *x.shape[1:])).astype(x.dtype) for p, x in zip(parts, leaves)]
        )

    slots = sum(sizes)
    # Column j of every block at once: C applied to the unit vector of slot j in each example.
    columns = jax.vmap(
        lambda e: rows(apply(f, batch, key, unrows(jnp.broadcast_to(e, (count, slots)))))
    )(jnp.eye(slots, dtype=dtype))  # (slot j, example, slot i)
    blocks = jnp.transpose(columns, (1, 2, 0)).astype(wide)
    # One eigh per example, never a batched one: jaxlib 0.10.2 CPU: batched eigh deadlocks
    # with >1 device.
    lam, q = lax.map(jnp.linalg.eigh, (blocks + jnp.swapaxes(blocks, 1, 2)) / 2)
    block_diagonal = _is_block_diagonal(apply, f, batch, key, rows, unrows, count, slots, dtype)

    def add(carry: tuple, example: tuple) -> tuple[tuple, None]:
        total, worst = carry
        one, lam_n, q_n, f_n = example
        single = jax.tree_util.tree_map(lambda x: x[None], one)
        out, vjp = jax.vjp(lambda p: model(p, single), params)
        grads = jax.vmap(lambda qk: vjp(unrows(qk[None].astype(dtype), 1))[0])(q_n.T)
        total = jax.tree_util.tree_map(
            lambda t, g: t + jnp.tensordot(lam_n, g.astype(wide) ** 2, axes=1), total, grads
        )
        gap = jnp.max(jnp.abs(rows(out, 1)[0] - f_n)) / (1 + jnp.max(jnp.abs(f_n)))
        return (total, jnp.maximum(worst, gap.astype(wide))), None

    (total, worst), _ = lax.scan(
        add, (_zeros(params, wide), jnp.zeros((), wide)), (batch, lam, q, rows(f))
    )
    separable = worst <= 100 * jnp.finfo(dtype).eps
    return lax.cond(
        separable & block_diagonal,
        lambda: _narrow(total, params),
        lambda: full_batch(model, apply, params, batch, key),
    )


def _is_block_diagonal(apply, f, batch, key, rows, unrows, count, slots, dtype) -> jax.Array:
    """Whether ``C`` has no block between two examples: ``C`` applied to a random vector on
    one example at a time must stay on that example (almost surely fails otherwise)."""
    probe = jax.random.normal(jax.random.key(0), (count, slots), dtype)
    own = jnp.eye(count, dtype=dtype)

    def leak(n: jax.Array) -> jax.Array:
        image = rows(apply(f, batch, key, unrows(probe * own[n][:, None])))
        return jnp.max(jnp.abs(image * (1 - own[n][:, None]))), jnp.max(jnp.abs(image))

    leaks, sizes = jax.vmap(leak)(jnp.arange(count))
    return jnp.max(leaks) <= 100 * jnp.finfo(dtype).eps * (1 + jnp.max(sizes))


def _offsets(sizes: list[int]) -> list[int]:
    total, out = 0, []
    for size in sizes[:-1]:
        total += size
        out.append(total)
    return out


def _wide(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)  # eigh needs >= 32 bits


def _zeros(params: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, dtype), params)


def _grow(total: Any, lam: jax.Array, row: Any, wide: Any) -> Any:
    return jax.tree_util.tree_map(lambda t, g: t + lam * g.astype(wide) ** 2, total, row)


def _narrow(total: Any, params: Any) -> Any:
    return jax.tree_util.tree_map(lambda t, p: t.astype(p.dtype), total, params)
