"""How every operator takes data: ``batches``, one pytree stacked on a leading axis.

Without ``batches`` the function is called on the inputs alone. With ``batches`` (every
leaf of shape ``(num_batches, ...)``, e.g. ``x.reshape(num_batches, batch_size, ...)``),
batch ``b`` is passed as the last argument, ``func(params, batch_b)`` (``func(*params,
batch_b)`` for tuple inputs), and an operator's product is one ``lax.scan`` over the batches
in order: the memory of one batch, the time of ``num_batches`` products, nothing kept between
products but the parameters and the data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._errors import HVPError
from .._inputs import is_array


def check_batches(batches: Any, fn_name: str) -> Any:
    """``batches`` as arrays, each leaf with the same leading length ``num_batches >= 1``."""
    leaves = jax.tree_util.tree_flatten_with_path(batches)[0]
    if not leaves:
        msg = (
            f"batches given to {fn_name} must hold at least one array (leaves stacked on a "
            f"leading batch axis), but got {batches!r}."
        )
        raise HVPError(msg)
    lengths = {}
    for path, leaf in leaves:
        where = f"batches{jax.tree_util.keystr(path)}"
        if not is_array(leaf):
            msg = (
                f"batches given to {fn_name} must be a pytree of arrays, but {where} has type "
                f"{type(leaf)}. Wrap numbers with jnp.asarray."
            )
            raise TypeError(msg)
        if leaf.ndim < 1:
            msg = (
                f"every leaf of the batches given to {fn_name} needs a leading batch axis, "
                f"but {where} is a scalar. Stack the batches: jnp.stack([batch_0, ...])."
            )
            raise HVPError(msg)
        lengths[where] = leaf.shape[0]
    if len(set(lengths.values())) > 1 or 0 in lengths.values():
        msg = (
            f"every leaf of the batches given to {fn_name} must have the same leading length "
            f"num_batches >= 1, but got {lengths}. Stack equal-size batches on axis 0, e.g. "
            "x.reshape(num_batches, batch_size, *x.shape[1:])."
        )
        raise HVPError(msg)
    return jax.tree_util.tree_map(jnp.asarray, batches)


def first_batch(batches: Any) -> Any:
    """Batch 0 (``None`` without batches): what a function is traced on for its shapes."""
    return None if batches is None else jax.tree_util.tree_map(lambda x: x[0], batches)


def num_batches(batches: Any) -> int:
    return jax.tree_util.tree_leaves(batches)[0].shape[0]


def sum_over_batches(fn: Callable, zeros: Any, batches: Any) -> Any:
    """``sum_b fn(batch_b, b)`` by one ``lax.scan`` (in order); ``zeros`` has its structure."""

    def add(total: Any, batch_and_index: tuple) -> tuple[Any, None]:
        return jax.tree_util.tree_map(jnp.add, total, fn(*batch_and_index)), None

    indices = jnp.arange(num_batches(batches))
    total, _ = lax.scan(add, zeros, (batches, indices))
    return total


def mean_over_batches(fn: Callable, zeros: Any, batches: Any) -> Any:
    """``mean_b fn(batch_b, b)``, as :func:`sum_over_batches` then divided."""
    count = num_batches(batches)
    total = sum_over_batches(fn, zeros, batches)
    return jax.tree_util.tree_map(lambda t: t / count, total)
