"""The Lanczos kernel: full reorthogonalisation, breakdown handling, thick restarts.

One kernel serves both the extreme eigenpairs (:func:`eigsh`, thick-restarted until the Ritz
residuals meet a tolerance) and stochastic Lanczos quadrature (:func:`projection`, one
cycle per probe, then :func:`quadrature`). It is written here rather than taken from
``matfree`` (which the trace estimators use) for two reasons, both checked against matfree
0.6.3:

* ``matfree.decomp.tridiag_sym`` runs a fixed number of steps from one vector and returns
  no residual: there is no way to continue or restart it until a tolerance is met
  (restarted Lanczos is matfree's open issue #125).
* it does not handle breakdown. When the probe's Krylov space is invariant before the
  requested depth (an operator with fewer distinct eigenvalues than steps: ``2 I``, a
  low-rank Hessian), it normalises a rounding-error residual and keeps going, and the
  tridiagonal matrix it returns has wrong eigenvalues, some outside ``[lambda_min,
  lambda_max]``. Here a residual below ``64 eps ||A v||`` is a breakdown: the next basis
  vector is a fresh random vector orthogonalised against the basis, coupled by zero, so the
  extra Ritz values get zero quadrature weight and the eigenpairs stay exact.

The basis is stored (``(m + 1) n`` numbers) and every new vector is orthogonalised against
all of it by classical Gram-Schmidt, with a second pass when the first cancelled most of the
vector (the DGKS criterion, as ARPACK): ``O(m n)`` work per product on top of it.
With full reorthogonalisation the projected matrix ``V^T A V`` is accumulated column by
column (Arnoldi's form), which is what makes thick restarting simple: the kept Ritz vectors
and the last residual vector are the new basis, and the arrow-shaped projection follows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

_BREAKDOWN_ULPS = 64  # a residual below this many ulps of ||A v||: an invariant subspace
_DGKS = 0.7071  # reorthogonalise again when a pass leaves less than this fraction of ||A v||


class Krylov(NamedTuple):
    """A Krylov basis and the operator projected on it.

    Attributes:
      basis: ``(m + 1, n)``: rows ``0..m-1`` orthonormal, row ``m`` the next vector.
      proj: ``(m + 1, m)``: ``proj[i, j] = v_i^T A v_j`` for the columns computed so far;
        ``proj[m, m - 1]`` is the norm of the last residual.
    """

    basis: jax.Array
    proj: jax.Array


class Ritz(NamedTuple):
    values: jax.Array  # (k,) in the order of preference
    vectors: jax.Array  # (k, n), unit norm
    residuals: jax.Array  # (k,) ||A u - lambda u||, computed with k products
    scale: jax.Array  # max |Ritz value|: the estimate of ||A|| the tolerance is relative to
    num_matvecs: jax.Array


def start(v0: jax.Array, m: int) -> Krylov:
    basis = jnp.zeros((m + 1, v0.size), v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    return Krylov(basis, jnp.zeros((m + 1, m), v0.dtype))


def extend(matvec: Callable, krylov: Krylov, first: int, key: jax.Array) -> Krylov:
    """Arnoldi steps ``first..m-1``; rows above ``first`` of the basis must be zero."""
    m = krylov.proj.shape[1]
    eps = jnp.finfo(krylov.basis.dtype).eps

    def step(j: jax.Array, state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        basis, proj = state
        w = matvec(basis[j])
        scale = jnp.linalg.norm(w)
        h = basis @ w
        w = w - h @ basis
        beta = jnp.linalg.norm(w)
        # A second pass when the first cancelled much of w (Daniel, Gragg, Kaufman and
        # Stewart's criterion): "twice is enough" for orthogonality to working precision.
        h, w, beta = lax.cond(
            beta < _DGKS * scale, _again, lambda b, h, w, beta: (h, w, beta), basis, h, w, beta
        )
        broke = beta <= _BREAKDOWN_ULPS * eps * scale
        following = lax.cond(
            broke,
            lambda: _orthonormal_to(
                basis, jax.random.normal(jax.random.fold_in(key, j), w.shape, w.dtype)
            ),
            lambda: w / jnp.where(broke, 1, beta),
        )
        h = h.at[j + 1].set(jnp.where(broke, 0, beta))
        return basis.at[j + 1].set(following), proj.at[:, j].set(h)

    return Krylov(*lax.fori_loop(first, m, step, tuple(krylov)))


def _again(basis: jax.Array, h: jax.Array, w: jax.Array, beta: jax.Array) -> tuple:
    correction = basis @ w
    w = w - correction @ basis
    return h + correction, w, jnp.linalg.norm(w)


def _orthonormal_to(basis: jax.Array, u: jax.Array) -> jax.Array:
    """``u`` orthogonalised against the basis (twice) and normalised; zero if in its span."""
    for _ in range(2):
        u = _normalise(u)
        u = u - (basis @ u) @ basis
    return _normalise(u)


def _normalise(u: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(u)
    return u / jnp.where(norm > 0, norm, 1)


def ritz_pairs(krylov: Krylov) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (ascending) and eigenvectors of the symmetrised projection."""
    return jnp.linalg.eigh(symmetric_projection(krylov))


def symmetric_projection(krylov: Krylov) -> jax.Array:
    """``(m, m)``: the projected operator ``V^T A V``, symmetrised."""
    m = krylov.proj.shape[1]
    t = krylov.proj[:m]
    return 0.5 * (t + t.T)


WHICH = ("largest", "smallest", "magnitude")


def preference(values: jax.Array, which: jax.Array) -> jax.Array:
    """Indices of ``values``, most wanted first; ``which`` indexes :data:`WHICH` (traced)."""
    key = jnp.where(which == 0, -values, jnp.where(which == 1, values, -jnp.abs(values)))
    return jnp.argsort(key, stable=True)


def restart(krylov: Krylov, values: jax.Array, vectors: jax.Array, keep: jax.Array) -> Krylov:
    """Thick restart: the Ritz vectors ``keep`` and the residual vector start the new basis."""
    m, p = krylov.proj.shape[1], keep.size
    basis, proj = krylov
    beta = proj[m, m - 1]
    kept = vectors[:, keep]
    new_basis = jnp.zeros_like(basis).at[:p].set(kept.T @ basis[:m]).at[p].set(basis[m])
    diagonal = jnp.arange(p)
    new_proj = (
        jnp.zeros_like(proj)
        .at[diagonal, diagonal]
        .set(values[keep])
        .at[p, :p]
        .set(beta * kept[m - 1])
    )
    return Krylov(new_basis, new_proj)


class _Loop(NamedTuple):
    krylov: Krylov
    values: jax.Array  # the Ritz pairs of ``krylov``
    vectors: jax.Array
    matvecs: jax.Array
    cycles: jax.Array
    done: jax.Array


def eigsh(
    matvec: Callable,
    v0: jax.Array,
    key: jax.Array,
    *,
    k: int,
    which: jax.Array,
    krylov_dim: int,
    tol: jax.Array,
    max_matvecs: jax.Array,
) -> Ritz:
    """The ``k`` most wanted eigenpairs of a symmetric ``matvec``, by thick-restarted Lanczos.

    Each cycle runs the basis up to ``krylov_dim`` vectors, then keeps the
    ``k + (krylov_dim - k) // 2`` most wanted Ritz vectors. It stops when the ``k`` wanted
    Ritz residuals (estimated by ``|beta_m y_m|``) are at most ``tol`` times the largest
    Ritz value in magnitude, or when another cycle would pass ``max_matvecs`` products.
    The returned residuals are then computed exactly, with ``k`` more products. Only ``k``
    and ``krylov_dim`` shape the program; ``which`` (an index into :data:`WHICH`), ``tol``
    and ``max_matvecs`` are traced values, so changing them does not recompile.
    """
    m = krylov_dim
    keep = m if m <= k else k + (m - k) // 2
    grow = m - keep

    def cycle(state: _Loop) -> _Loop:
        # The first cycle starts from v0; later ones restart from the kept Ritz vectors.
        # One code path for both keeps one Lanczos loop and one eigh in the program.
        restarted = state.cycles > 0
        krylov = lax.cond(
            restarted,
            lambda s: restart(s.krylov, s.values, s.vectors, preference(s.values, which)[:keep]),
            lambda s: s.krylov,
            state,
        )
        first = jnp.where(restarted, keep, 0)
        krylov = extend(matvec, krylov, first, jax.random.fold_in(key, state.cycles))
        values, vectors = ritz_pairs(krylov)
        wanted = preference(values, which)[:k]
        estimates = jnp.abs(krylov.proj[m, m - 1] * vectors[m - 1, wanted])
        done = jnp.all(estimates <= tol * jnp.max(jnp.abs(values)))
        matvecs = state.matvecs + m - first
        return _Loop(krylov, values, vectors, matvecs, state.cycles + 1, done)

    def go_on(state: _Loop) -> jax.Array:
        first_cycle = state.cycles == 0
        budget = (grow > 0) & (state.matvecs + grow <= max_matvecs)
        return first_cycle | (~state.done & budget)

    dtype = v0.dtype
    init = _Loop(
        start(v0, m),
        jnp.zeros(m, dtype),
        jnp.eye(m, dtype=dtype),
        jnp.asarray(0),
        jnp.asarray(0),
        jnp.asarray(False),
    )
    state = lax.while_loop(go_on, cycle, init)

    wanted = preference(state.values, which)[:k]
    ritz_vectors = state.vectors[:, wanted].T @ state.krylov.basis[:m]
    ritz_vectors = jax.vmap(_normalise)(ritz_vectors)
    images = lax.map(matvec, ritz_vectors)  # sequential: k is small, and it compiles faster
    values = state.values[wanted]
    residuals = jnp.linalg.norm(images - values[:, None] * ritz_vectors, axis=1)
    scale = jnp.max(jnp.abs(state.values))
    return Ritz(values, ritz_vectors, residuals, scale, state.matvecs + k)


def projection(matvec: Callable, v0: jax.Array, krylov_dim: int, key: jax.Array) -> jax.Array:
    """``(m, m)``: the operator projected on ``v0``'s Krylov basis (one Lanczos cycle)."""
    return symmetric_projection(extend(matvec, start(v0, krylov_dim), 0, key))


def quadrature(projections: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gauss quadrature nodes and weights from a stack of :func:`projection` matrices.

    The weights are the squared first components of each matrix's eigenvectors: they sum
    to 1, and ``sum_j w_j f(theta_j)`` approximates ``u^T f(A) u`` for ``u = v0 / ||v0||``,
    exactly for polynomials of degree below ``2 krylov_dim``.
    """
    # One eigh per matrix, never a batched one: jaxlib 0.10.2 CPU: batched eigh deadlocks
    # with >1 device (every device's thread waits in LAPACK's batch thread pool). The
    # results are the same, bit for bit.
    nodes, vectors = lax.map(jnp.linalg.eigh, projections)
    return nodes, vectors[:, 0] ** 2
