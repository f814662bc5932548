"""``eigenvalues``: the extreme eigenpairs of a Hessian, converged to a stated tolerance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _eager
from .._errors import HVPError
from .._sharding import match_layout
from .._validate import check_choice, check_count, check_key
from . import _lanczos
from ._operand import (
    FlatOperator,
    compiled_call,
    operand,
    size_of,
)

_NAME = "eigenvalues"
DEFAULT_MAX_MATVECS = 1000


class Eigen(NamedTuple):
    """Eigenpairs from :func:`eigenvalues`, with their convergence status.

    Attributes:
      values: ``(k,)``, most wanted first: descending for ``"largest"``, ascending for
        ``"smallest"``, by descending magnitude for ``"magnitude"``.
      vectors: with ``return_vectors=True``, unit eigenvectors in the structure of the
        operator's vectors, each leaf with a leading axis of length ``k`` (as
        ``HessianOperator.matmat`` takes them); otherwise ``None``.
      residuals: ``(k,)``, ``||H u - lambda u||`` for each returned pair, computed with
        ``k`` extra products (not estimated).
      converged: ``(k,)`` bools, ``residuals <= tol * scale``.
      scale: the largest Ritz value in magnitude, the estimate of ``||H||_2`` that ``tol``
        is relative to.
      num_matvecs: the Hessian products used, the residual check included.
    """

    values: jax.Array
    vectors: Any
    residuals: jax.Array
    converged: jax.Array
    scale: jax.Array
    num_matvecs: jax.Array


def eigenvalues(
    op: Any,
    k: int = 1,
    *,
    key: jax.Array,
    like: Any = None,
    which: str = "largest",
    return_vectors: bool = False,
    tol: float | None = None,
    krylov_dim: int | None = None,
    max_matvecs: int = DEFAULT_MAX_MATVECS,
    throw: bool = False,
) -> Eigen:
    """The ``k`` largest (or smallest, or largest-magnitude) eigenvalues of a symmetric operator.

    Thick-restarted Lanczos with full reorthogonalisation, in one compiled
    ``lax.while_loop``: each cycle extends the Krylov basis to ``krylov_dim`` vectors, keeps
    the ``k + (krylov_dim - k) // 2`` best Ritz vectors and goes on, until every wanted Ritz
    residual ``||H u - lambda u||`` is at most ``tol * ||H||`` (``||H||`` estimated by the
    largest Ritz value in magnitude) or another cycle would pass ``max_matvecs`` products.
    The residuals are then recomputed exactly and returned with a per-pair ``converged``
    flag: an unconverged result says so, it is never silently wrong in that sense. For a
    well-separated eigenvalue the error is at most ``residual**2 / gap``, and always at most
    ``residual``.

    Costs about ``krylov_dim`` Hessian products per cycle (the first; later ones
    ``krylov_dim - kept``), ``O(krylov_dim * n)`` work per product for the
    reorthogonalisation, and ``(krylov_dim + 1) * n`` numbers of memory for the basis.

    Like every single-vector Krylov method it sees one copy of an exactly repeated
    eigenvalue unless the Krylov space breaks down (the returned pairs are still accurate
    eigenpairs, but for ``k > 1`` a repeated top eigenvalue may be listed once).

    Args:
      op: a :class:`jaxhvp.HessianOperator` (also from :func:`batch_hessian_operator` or
        :func:`block_operator`), or any symmetric linear function ``matvec(v)`` over a
        pytree, with ``like``.
      k: how many eigenvalues; at most the dimension ``n``.
      key: a PRNG key for the starting vector (and fresh vectors after a breakdown).
      like: only with a plain ``matvec``: a pytree of arrays or ``jax.ShapeDtypeStruct``
        with the structure, shapes and floating dtypes of ``v``.
      which: ``"largest"`` (algebraically largest, the default), ``"smallest"``
        (algebraically smallest, e.g. the most negative curvature) or ``"magnitude"``.
      return_vectors: whether to return the eigenvectors.
      tol: the relative residual tolerance; default ``sqrt(eps)`` of the dtype
        (``1.5e-8`` in float64, ``3.5e-4`` in float32).
      krylov_dim: the basis size; default ``max(20, 2 k + 10)``; at most ``n`` (capped), more
        than ``k`` unless it equals ``n``.
      max_matvecs: the budget of Hessian products for the Lanczos cycles (the ``k``
        products of the residual check come on top); at least ``krylov_dim``.
      throw: if True, an eager call whose pairs did not all converge raises
        :class:`jaxhvp.HVPError`; under ``jax.jit`` read ``converged`` instead.

    Returns:
      An :class:`Eigen` (a pytree; ``values``, ``vectors``, ``residuals``, ``converged``,
      ``scale``, ``num_matvecs``).

    Raises:
      TypeError: ``op`` is not an operator or callable, ``like`` is missing or not arrays,
        ``key`` is not a PRNG key.
      HVPError: invalid options (``k``, ``which``, ``tol``, ...), a matvec whose output does
        not match ``like``, or, with ``throw=True``, pairs that did not converge.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> import jaxhvp.spectrum
      >>> def f(x):
      ...     return 0.5 * jnp.sum(jnp.array([4.0, -3.0, 2.0, 1.0]) * x**2)
      >>> op = jaxhvp.hessian_operator(f, jnp.ones(4))
      >>> eig = jaxhvp.spectrum.eigenvalues(op, k=2, key=jax.random.key(0))
      >>> eig.values.round(4), eig.converged
      (Array([4., 2.], dtype=float32), Array([ True,  True], dtype=bool))
      >>> jaxhvp.spectrum.eigenvalues(op, key=jax.random.key(0), which="smallest").values.round(4)
      Array([-3.], dtype=float32)

      Any symmetric matvec over a pytree works, with ``like`` giving the vectors' shape:

      >>> def matvec(v):
      ...     return {"a": 2.0 * v["a"], "b": v["a"].sum() + v["b"]}
      >>> like = {"a": jnp.zeros(3), "b": jnp.zeros(())}
      >>> eig = jaxhvp.spectrum.eigenvalues(
      ...     matvec, key=jax.random.key(1), like=like, which="magnitude", return_vectors=True
      ... )
      >>> jax.tree.map(jnp.shape, eig.vectors)
      {'a': (1, 3), 'b': (1,)}
    """
    matvec, like = operand(op, like, _NAME)
    key = check_key(key, _NAME)
    n = size_of(like)
    k = check_count(k, "k", _NAME)
    if k > n:
        msg = (
            f"{_NAME} can return at most n = {n} eigenvalues (the operator's dimension), but "
            f"k = {k}. Ask for k <= {n}."
        )
        raise HVPError(msg)
    which = check_choice(which, "which", _lanczos.WHICH, _NAME)
    krylov_dim = _krylov_dim(krylov_dim, k, n)
    max_matvecs = check_count(max_matvecs, "max_matvecs", _NAME)
    if max_matvecs < krylov_dim:
        msg = (
            f"max_matvecs given to {_NAME} must allow one full cycle of krylov_dim = "
            f"{krylov_dim} products, but got {max_matvecs}. Raise max_matvecs or lower "
            "krylov_dim."
        )
        raise HVPError(msg)
    tol = _check_tol(tol)
    if throw and not _eager.is_eager((like, key)):
        msg = (
            f"throw=True needs an eager call of {_NAME}: under jax.jit (or another "
            "transformation) the result is not known yet. Check result.converged instead."
        )
        raise HVPError(msg)
    # Only k and krylov_dim shape the program: the rest are traced, changing them is free.
    settings = _Settings(
        which=jnp.asarray(_lanczos.WHICH.index(which), jnp.int32),
        tol=jnp.asarray(np.nan if tol is None else tol, jnp.float32),
        max_matvecs=jnp.asarray(max_matvecs, jnp.int32),
    )
    result = compiled_call(_eigen, (k, krylov_dim), matvec, (like, key, settings))
    vectors = match_layout(result.vectors, like, stacked=True) if return_vectors else None
    result = result._replace(vectors=vectors)
    if throw and not bool(jnp.all(result.converged)):
        msg = (
            f"{_NAME} did not converge to tol = {tol or 'sqrt(eps)'} relative to "
            f"||H|| ~ {float(result.scale):.6g}: residuals {np.asarray(result.residuals)} after "
            f"{int(result.num_matvecs)} products. Raise max_matvecs or krylov_dim, or loosen tol."
        )
        raise HVPError(msg)
    return result


class _Settings(NamedTuple):
    which: jax.Array  # an index into _lanczos.WHICH
    tol: jax.Array  # NaN: sqrt(eps) of the operator's dtype
    max_matvecs: jax.Array


def _check_tol(tol: Any) -> float | None:
    if tol is None:
        return None
    if isinstance(tol, (int, float, np.floating)) and not isinstance(tol, bool) and tol > 0:
        return float(tol)
    msg = f"tol given to {_NAME} must be a positive number or None, but got {tol!r}."
    raise HVPError(msg)


def _krylov_dim(krylov_dim: Any, k: int, n: int) -> int:
    if krylov_dim is None:
        return min(n, max(20, 2 * k + 10))
    krylov_dim = min(check_count(krylov_dim, "krylov_dim", _NAME), n)
    if krylov_dim <= k < n:
        msg = (
            f"krylov_dim given to {_NAME} must exceed k = {k} so that restarts can keep the "
            f"wanted vectors and add new ones, but got {krylov_dim}. Use krylov_dim >= "
            f"{min(n, max(20, 2 * k + 10))}, say."
        )
        raise HVPError(msg)
    return krylov_dim


def _eigen(
    matvec: Callable, like: Any, key: jax.Array, settings: _Settings, k: int, krylov_dim: int
) -> Eigen:
    flat = FlatOperator(matvec, like, _NAME)
    start_key, loop_key = jax.random.split(key)
    v0 = jax.random.normal(start_key, (flat.n,), flat.dtype)
    default_tol = np.sqrt(np.finfo(flat.dtype).eps)
    tol = jnp.where(jnp.isnan(settings.tol), default_tol, settings.tol).astype(flat.dtype)
    ritz = _lanczos.eigsh(
        flat,
        v0,
        loop_key,
        k=k,
        which=settings.which,
        krylov_dim=krylov_dim,
        tol=tol,
        max_matvecs=settings.max_matvecs,
    )
    converged = ritz.residuals <= tol * ritz.scale
    vectors = flat.stacked(ritz.vectors)
    return Eigen(ritz.values, vectors, ritz.residuals, converged, ritz.scale, ritz.num_matvecs)
