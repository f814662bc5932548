"""Preconditioners for :func:`jaxhvp.solve`'s conjugate gradients: approximate inverses of
``A + damping I`` that are cheap to apply.

* :func:`diagonal_preconditioner`: Jacobi, ``1 / (diag(A) + damping)``, with the diagonal
  from :func:`jaxhvp.spectrum.diagonal` (estimated or exact).
* :func:`nystrom_preconditioner`: the randomized Nyström preconditioner of Frangella, Tropp
  and Udell (2023): a rank-``l`` approximation ``U diag(lam) U^T`` of a positive
  semi-definite ``A`` from ``l`` products, and
  ``P^-1 = (lam_l + damping) U (diag(lam) + damping)^-1 U^T + (I - U U^T)``, which takes the
  ``l`` largest eigenvalues out of the condition number.

Both are pytrees (they cross ``jax.jit`` and are built once for many solves); any
``callable(v) -> M v`` over the operator's vectors serves as a preconditioner too.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from .. import _eager, _sharding, _tree
from .._errors import HVPError
from .._validate import check_count, check_key
from ..operators import Operator


class Preconditioner(abc.ABC):
    """An approximate inverse of ``A + damping I``, applied as ``apply(v, damping)``."""

    @abc.abstractmethod
    def apply(self, v: Any, damping: jax.Array) -> Any:
        """``M v``, ``M ~ (A + damping I)^-1``; for tracing."""


@functools.partial(jax.tree_util.register_dataclass, data_fields=["diagonal"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class DiagonalPreconditioner(Preconditioner):
    """Jacobi: ``v / (max(diagonal, 0) + damping)``, entries floored at ``1e-6`` of the
    largest (an estimated diagonal can be negative or zero where ``A``'s is small).

    Attributes:
      diagonal: ``diag(A)`` in the structure of the operator's vectors.
    """

    diagonal: Any

    def apply(self, v: Any, damping: jax.Array) -> Any:
        shifted = jax.tree_util.tree_map(lambda d: jnp.maximum(d, 0) + damping, self.diagonal)
        largest = jnp.max(jnp.stack([jnp.max(d) for d in jax.tree_util.tree_leaves(shifted)]))
        floor = jnp.where(largest > 0, 1e-6 * largest, 1.0)
        return jax.tree_util.tree_map(
            lambda x, d: (x / jnp.maximum(d, floor)).astype(x.dtype), v, shifted
        )


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["vectors", "values"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class NystromPreconditioner(Preconditioner):
    """``(lam_l + damping) U (diag(lam) + damping)^-1 U^T v + (v - U U^T v)``.

    Attributes:
      vectors: ``U``, orthonormal, stacked on a leading axis of length ``l`` of every leaf.
      values: ``(l,)``, the approximate eigenvalues ``lam``, descending.
    """

    vectors: Any
    values: jax.Array

    def apply(self, v: Any, damping: jax.Array) -> Any:
        coefficients = _tree.stacked_dot(self.vectors, v)
        inner = (self.values[-1] + damping) / (self.values + damping) - 1
        # (lam_l + mu) U (Lam + mu)^-1 U^T v + v - U U^T v
        return _tree.add(v, _tree.combine(self.vectors, inner * coefficients))


def diagonal_preconditioner(
    op: Operator,
    *,
    key: jax.Array | None = None,
    num_probes: int | None = None,
    method: str = "hutchinson",
    probe_batch_size: int | None = None,
) -> DiagonalPreconditioner:
    """A Jacobi preconditioner from the diagonal of ``op``.

    The diagonal comes from :func:`jaxhvp.spectrum.diagonal` with the same arguments:
    ``num_probes`` products for an estimate (``"hutchinson"``, ``"diag++"``), or the exact
    diagonal (``method="exact"``, no key). Helps when the diagonal varies over orders of
    magnitude (badly scaled parameters); does nothing for a matrix whose diagonal is flat.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> op = jaxhvp.hessian_operator(lambda x: jnp.sum(jnp.array([1.0, 1e4]) * x**2), jnp.ones(2))
      >>> jaxhvp.linalg.diagonal_preconditioner(op, method="exact").diagonal
      Array([2.e+00, 2.e+04], dtype=float32)
    """
    from ..spectrum import diagonal

    _check_operator(op, "diagonal_preconditioner")
    estimate = diagonal(
        op, key=key, num_probes=num_probes, method=method, probe_batch_size=probe_batch_size
    )
    return DiagonalPreconditioner(estimate.value)


def nystrom_preconditioner(op: Operator, rank: int, *, key: jax.Array) -> NystromPreconditioner:
    """The randomized Nyström preconditioner of a positive semi-definite ``op``.

    Costs ``rank`` products (one batch of them), ``rank`` vectors of memory and an
    ``n x rank`` QR and SVD. Choose ``rank`` above the number of eigenvalues larger than
    the damping (the effective dimension); CG then converges in a number of iterations that
    no longer depends on them. For an indefinite ``op`` (a Hessian away from a minimum) the
    factorisation is not defined and the solve reports ``NONFINITE``: use a GGN or Fisher.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> op = jaxhvp.hessian_operator(lambda x: jnp.sum(jnp.arange(1.0, 5.0) * x**2), jnp.ones(4))
      >>> pre = jaxhvp.linalg.nystrom_preconditioner(op, 4, key=jax.random.key(0))
      >>> pre.values.round(2)  # rank n: the exact spectrum
      Array([8., 6., 4., 2.], dtype=float32)
      >>> x, info = jaxhvp.solve(op, jnp.ones(4), preconditioner=pre)
      >>> int(info.iterations)  # a perfect preconditioner: one CG step
      1
    """
    name = "nystrom_preconditioner"
    _check_operator(op, name)
    rank = check_count(rank, "rank", name)
    n = sum(x.size for x in jax.tree_util.tree_leaves(op.like))
    if rank > n:
        msg = f"rank given to {name} must be at most the operator's dimension {n}, but got {rank}."
        raise HVPError(msg)
    pre = _eager.call(_nystrom, (rank,), op, (check_key(key, name),))
    vectors = _sharding.match_layout(pre.vectors, op.like, stacked=True)
    return dataclasses.replace(pre, vectors=vectors)


def _check_operator(op: Any, fn_name: str) -> None:
    if not isinstance(op, Operator):
        msg = (
            f"op given to {fn_name} must be a jaxhvp operator (jaxhvp.hessian_operator, "
            f"jaxhvp.ggn_operator, ...), but got {type(op)}."
        )
        raise TypeError(msg)


def _nystrom(op: Operator, key: jax.Array, rank: int) -> NystromPreconditioner:
    flat, unravel = _sharding.ravel(op.like)
    n, dtype = flat.size, flat.dtype
    wide = jnp.promote_types(dtype, jnp.float32)  # QR, Cholesky and SVD in >= 32 bits
    omega, _ = jnp.linalg.qr(jax.random.normal(key, (n, rank), wide))

    def product(column: jax.Array) -> jax.Array:
        return _sharding.ravel(op._product(unravel(column.astype(dtype))))[0].astype(wide)

    sketch = jax.vmap(product, in_axes=1, out_axes=1)(omega)  # A Omega, (n, rank)
    shift = jnp.sqrt(n) * jnp.finfo(wide).eps * jnp.linalg.norm(sketch)
    shifted = sketch + shift * omega
    factor = jnp.linalg.cholesky(omega.T @ shifted)
    b = jax.scipy.linalg.solve_triangular(factor, shifted.T, lower=True).T
    u, s, _ = jnp.linalg.svd(b, full_matrices=False)
    values = jnp.maximum(s**2 - shift, 0)
    vectors = jax.vmap(lambda column: unravel(column.astype(dtype)), in_axes=1)(u)
    return NystromPreconditioner(vectors, values)
