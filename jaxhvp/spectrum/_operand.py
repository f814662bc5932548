"""What the spectrum estimators accept: an operator, a key, and how they see it as a flat matvec.

Every estimator takes ``op``: any :class:`jaxhvp.Operator` (Hessian, GGN, Fisher, empirical
Fisher, batch, block, damped, scaled, summed) or any symmetric linear map ``matvec(v)`` over a
pytree, with ``like=`` giving the vectors' structure, shapes and dtypes. Inside the
compiled kernel the map is seen over flat vectors (``ravel_pytree`` order), as
:class:`FlatOperator`. :func:`compiled_call` runs an estimator as one compiled kernel through
the package's eager-call machinery (``_eager.call``): the arrays an operator or a matvec
holds or reads are the kernel's arguments, so a fresh closure over new arrays (or a new
operator of the same function) does not recompile.
Nothing is baked in as a constant, and under an outer trace the estimator is simply traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _eager, _sharding, _tree
from .._errors import HVPError
from .._validate import check_count
from ..operators import Operator


def operand(op: Any, like: Any, fn_name: str) -> tuple[Callable, Any]:
    """Checks ``op`` and ``like``; returns ``(matvec, like)`` with ``like`` as arrays.

    An :class:`Operator` supplies its own structure (``op.like``); a plain callable needs
    ``like``: a pytree of arrays or ``jax.ShapeDtypeStruct`` with floating dtypes.
    """
    if isinstance(op, Operator):
        if like is not None:
            msg = (
                f"{fn_name} takes like= only with a plain matvec function; a jaxhvp operator "
                "already knows its vectors' structure. Drop like=."
            )
            raise HVPError(msg)
        return op, op.like
    if not callable(op):
        msg = (
            f"The op given to {fn_name} must be a jaxhvp operator or a callable "
            f"matvec(v) -> H v over a pytree, but got {type(op)}."
        )
        raise TypeError(msg)
    if like is None:
        msg = (
            f"{fn_name} needs like= with a plain matvec function: a pytree of arrays (or "
            "jax.ShapeDtypeStruct) with the structure, shapes and dtypes of the vectors v, "
            f"e.g. {fn_name}(matvec, like=params, ...)."
        )
        raise TypeError(msg)
    return op, _as_arrays(like, fn_name)


def compiled_call(impl: Callable, options: tuple, matvec: Callable, args: tuple) -> Any:
    """``impl(matvec, *args, *options)`` as a compiled kernel; ``options`` are static."""
    return _eager.call(impl, options, matvec, args)


def _as_arrays(like: Any, fn_name: str) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    if not leaves:
        msg = f"like given to {fn_name} must hold at least one array, but got {like!r}."
        raise HVPError(msg)
    arrays = []
    for path, leaf in leaves:
        where = f"like{jax.tree_util.keystr(path)}"
        if isinstance(leaf, jax.ShapeDtypeStruct):
            leaf = jnp.zeros(leaf.shape, leaf.dtype, device=leaf.sharding)
        elif isinstance(leaf, (jax.Array, np.ndarray)):
            leaf = jnp.asarray(leaf)
        else:
            msg = (
                f"like given to {fn_name} must be a pytree of arrays or jax.ShapeDtypeStruct, "
                f"but {where} has type {type(leaf)}."
            )
            raise TypeError(msg)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            msg = (
                f"{fn_name} works on real floating vectors, but {where} has dtype "
                f"{leaf.dtype}. Give like in the dtype of the vectors, e.g. float32."
            )
            raise HVPError(msg)
        arrays.append(leaf)
    return treedef.unflatten(arrays)


def check_batch_size(value: Any, fn_name: str) -> int | None:
    return None if value is None else check_count(value, "probe_batch_size", fn_name)


def size_of(like: Any) -> int:
    return sum(int(np.prod(jnp.shape(x))) for x in jax.tree_util.tree_leaves(like))


class FlatOperator:
    """``matvec`` seen over flat vectors of ``like``'s ``ravel_pytree`` order; traced only."""

    def __init__(self, matvec: Callable, like: Any, fn_name: str) -> None:
        flat, self.unravel = _sharding.ravel(like)
        self.n, self.dtype = flat.size, flat.dtype
        self.zeros = jnp.zeros_like(flat)  # the flat vectors' ``like``
        self._matvec, self._like = matvec, like
        _check_output(matvec, like, fn_name)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _sharding.ravel(self._matvec(self.unravel(x)))[0].astype(self.dtype)

    def tree(self, x: jax.Array) -> Any:
        """A flat vector as a result: the pytree of ``like``, each leaf laid out as like's."""
        return _sharding.match_layout(self.unravel(x), self._like)

    def stacked(self, rows: jax.Array) -> Any:
        """Flat vectors stacked on axis 0 as the pytree of ``like``, each leaf stacked."""
        return jax.vmap(self.unravel)(rows)


def _check_output(matvec: Callable, like: Any, fn_name: str) -> None:
    expected, given = _tree.signature(like), _tree.signature(jax.eval_shape(matvec, like))
    if given != expected:
        msg = (
            f"The matvec given to {fn_name} must return H v with the structure, shapes and "
            f"dtypes of v, {expected[0]} with leaves {expected[1]}, but it returned "
            f"{given[0]} with leaves {given[1]}. A symmetric operator maps the vector space "
            "to itself."
        )
        raise HVPError(msg)


def map_probes(fn: Callable, xs: Any, batch_size: int | None) -> Any:
    """``fn`` over the leading axis of ``xs``: all at once (``vmap``) or in chunks (``lax.map``
    over chunks that keep a sharded axis's rows on their devices)."""
    return _sharding.map_in_chunks(fn, xs, batch_size)


def rademacher(key: jax.Array, n: int, dtype: Any) -> jax.Array:
    return jax.random.rademacher(key, (n,), dtype=dtype)


def require_matfree(what: str) -> None:
    """Raises at the call, not inside the compiled kernel, when matfree is missing."""
    try:
        import matfree  # noqa: F401
    except ImportError as error:
        msg = (
            f"{what} uses the optional dependency matfree: pip install matfree (or, "
            "from a clone of jaxhvp, pip install -e '.[spectrum]')."
        )
        raise ImportError(msg) from error
