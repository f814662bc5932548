"""The approximate inverses of :func:`jaxhvp.solve`, as influence-function papers use them.

* LiSSA (Agarwal, Bullins and Hazan, 2017; Koh and Liang, 2017): the Neumann series
  ``x_{j+1} = x_j + (b - (A_j + damping I) x_j) / scale``, where ``A_j`` is the operator on
  batch ``j`` alone (cycling through the batches) — stochastic Richardson iteration. It
  converges in expectation when ``scale`` exceeds the largest eigenvalue of every ``A_j +
  damping I`` and those are positive definite; its error decays as ``(1 - lam_min/scale)^j``
  and then stalls at the batches' noise.
* Low rank (Schioppa et al., 2022): the top-``rank`` eigenpairs ``(lam, U)`` of ``A`` by
  Lanczos (:func:`jaxhvp.spectrum.eigenvalues`, by magnitude), and
  ``x = U (diag(lam) + damping)^-1 U^T b``: the inverse on the top eigenspace, nothing on
  the rest. Exact when ``b`` lies in that eigenspace; otherwise the part of ``b`` outside
  it is dropped, which the reported residual shows.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .. import _tree
from ..operators import Operator
from ..spectrum import _eigen, _lanczos
from ._krylov import DECIDE_BY_RESIDUAL, Outcome
from ._result import SolveStatus


class _Lissa(NamedTuple):
    x: Any
    steps: jax.Array
    nonfinite: jax.Array


def lissa(
    op: Operator, b: Any, x0: Any, damping: jax.Array, scale: jax.Array, depth: jax.Array
) -> Outcome:
    def keep_going(s: _Lissa) -> jax.Array:
        return (s.steps < depth) & ~s.nonfinite

    def step(s: _Lissa) -> _Lissa:
        ax = _tree.axpy(damping, s.x, op._batch_product(s.x, s.steps))
        x = _tree.axpy(1 / scale, _tree.sub(b, ax), s.x)
        nonfinite = ~_tree.finite(x)
        return _Lissa(_tree.where(nonfinite, s.x, x), s.steps + 1, nonfinite)

    x0 = _tree.zeros_like(b) if x0 is None else x0
    s = lax.while_loop(keep_going, step, _Lissa(x0, jnp.asarray(0, jnp.int32), jnp.asarray(False)))
    status = jnp.where(s.nonfinite, SolveStatus.NONFINITE, DECIDE_BY_RESIDUAL)
    return Outcome(s.x, status.astype(jnp.int32), s.steps, s.steps)


class Eigenspace(NamedTuple):
    """The top eigenpairs a low-rank solve inverts on; computed once for many right sides."""

    values: jax.Array
    vectors: Any
    num_matvecs: jax.Array


def eigenspace(
    op: Operator, key: jax.Array, max_matvecs: jax.Array, rank: int, krylov_dim: int
) -> Eigenspace:
    like = op.like
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(like))
    settings = _eigen._Settings(
        which=jnp.asarray(_lanczos.WHICH.index("magnitude"), jnp.int32),
        tol=jnp.asarray(jnp.sqrt(jnp.finfo(dtype).eps), jnp.float32),
        max_matvecs=max_matvecs,
    )
    eig = _eigen._eigen(op._product, like, key, settings, rank, krylov_dim)
    return Eigenspace(eig.values, eig.vectors, eig.num_matvecs)


def lowrank(space: Eigenspace, b: Any, damping: jax.Array) -> Outcome:
    shifted = space.values + damping
    usable = jnp.abs(shifted) > jnp.finfo(shifted.dtype).eps * jnp.max(jnp.abs(shifted))
    coefficients = _tree.stacked_dot(space.vectors, b)
    coefficients = jnp.where(usable, coefficients / jnp.where(usable, shifted, 1), 0)
    x = _tree.combine(space.vectors, coefficients)
    status = jnp.where(_tree.finite(x), DECIDE_BY_RESIDUAL, SolveStatus.NONFINITE)
    matvecs = space.num_matvecs.astype(jnp.int32)
    return Outcome(x, status.astype(jnp.int32), matvecs, matvecs)
