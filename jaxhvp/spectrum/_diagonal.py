"""``diagonal``: the diagonal of any operator, estimated from products with random probes
(Hutchinson; Diag++), or exactly.

Diag++ (Baston and Nakatsukasa, 2022) is Hutch++'s construction for the diagonal: a sketch
``Q`` of the range from ``s`` probes, the exact diagonal of ``Q Q^T A`` (``s`` more
products), and Hutchinson's estimator on the deflated rest ``(I - Q Q^T) A``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._errors import HVPError
from .._sharding import match_layout
from .._validate import check_choice, check_count, check_key
from ..operators import Operator
from ..operators._base import unit_diagonal
from ._operand import (
    FlatOperator,
    check_batch_size,
    compiled_call,
    map_probes,
    operand,
    rademacher,
)

_NAME = "diagonal"
METHODS = ("hutchinson", "diag++", "exact")
_MINIMUM_PROBES = {"hutchinson": 2, "diag++": 4}


class DiagonalEstimate(NamedTuple):
    """The diagonal from :func:`diagonal`, in the structure of the operator's vectors.

    Attributes:
      value: the estimate of each diagonal entry.
      stderr: per entry, the standard error of the estimate: the sample standard deviation
        of the per-probe estimates ``z_i * (A z_i)`` over ``sqrt(number of probes)`` (for
        Diag++, of the deflated rest's probes). Zero for ``method="exact"``.
      num_matvecs: the products used (for an exact GGN or Fisher diagonal in output space,
        the vjps).
    """

    value: Any
    stderr: Any
    num_matvecs: jax.Array


def diagonal(
    op: Any,
    *,
    key: jax.Array | None = None,
    num_probes: int | None = None,
    method: str = "hutchinson",
    like: Any = None,
    probe_batch_size: int | None = None,
) -> DiagonalEstimate:
    """Estimates the diagonal of a symmetric operator from products with random probes.

    * ``"hutchinson"`` (default): ``mean_i z_i * (A z_i)`` over Rademacher probes ``z_i``
      (Bekas, Kokiopoulou and Saad, 2007), as AdaHessian and Sophia estimate the Hessian
      diagonal; exact for a diagonal matrix. ``num_probes`` products; at least 2. The error
      of an entry shrinks as ``sqrt(sum_{j != i} A_ij^2 / num_probes)``.
    * ``"diag++"``: a rank-``s`` sketch (``s = num_probes // 3``), the exact diagonal of its
      part, and Hutchinson's on the rest; exact when ``rank(A) <= s``; better than
      Hutchinson when a few eigenvalues dominate. ``num_probes`` products; at least 4.
    * ``"exact"``: no probes (``key`` and ``num_probes`` are not used): ``n`` products with
      unit vectors, or, for a GGN or Fisher operator with fewer outputs than parameters,
      the output-space computation of :meth:`jaxhvp.operators.Operator.exact_diagonal`.

    Args:
      op: any :class:`jaxhvp.Operator`, or a symmetric ``matvec(v)`` with ``like``.
      key: a PRNG key for the probes (not for ``"exact"``).
      num_probes: the number of probes (not for ``"exact"``).
      method: ``"hutchinson"``, ``"diag++"`` or ``"exact"``.
      like: only with a plain ``matvec``: the vectors' structure.
      probe_batch_size: products computed this many at a time (``lax.map``) to bound memory;
        the probes, and so the estimate, do not depend on it.

    Returns:
      A :class:`DiagonalEstimate` ``(value, stderr, num_matvecs)``; ``value`` and ``stderr``
      have the structure of the operator's vectors.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> import jaxhvp.spectrum
      >>> op = jaxhvp.hessian_operator(lambda x: jnp.sum(x**4), jnp.array([1.0, 2.0, 3.0]))
      >>> est = jaxhvp.spectrum.diagonal(op, key=jax.random.key(0), num_probes=4)
      >>> est.value, est.stderr  # a diagonal Hessian: exact, with zero error
      (Array([ 12.,  48., 108.], dtype=float32), Array([0., 0., 0.], dtype=float32))
    """
    matvec, like = operand(op, like, _NAME)
    method = check_choice(method, "method", METHODS, _NAME)
    batch_size = check_batch_size(probe_batch_size, _NAME)
    if method == "exact":
        if key is not None or num_probes is not None:
            msg = f"{_NAME}(method='exact') uses no probes: drop key= and num_probes=."
            raise HVPError(msg)
        if isinstance(op, Operator):
            value, cost = op.exact_diagonal(batch_size), op.exact_diagonal_cost()
        else:
            FlatOperator(matvec, like, _NAME)  # checks the output's structure
            value, cost = compiled_call(unit_diagonal, (batch_size,), matvec, (like,)), None
        value = match_layout(value, like)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, value)
        cost = sum(x.size for x in jax.tree_util.tree_leaves(like)) if cost is None else cost
        return DiagonalEstimate(value, zeros, jnp.asarray(cost))
    if key is None or num_probes is None:
        msg = (
            f"{_NAME}(method={method!r}) needs key= and num_probes=, e.g. "
            "key=jax.random.key(0), num_probes=100 (or method='exact' for small problems)."
        )
        raise TypeError(msg)
    key = check_key(key, _NAME)
    num_probes = check_count(num_probes, "num_probes", _NAME, minimum=_MINIMUM_PROBES[method])
    estimate = compiled_call(_ESTIMATORS[method], (num_probes, batch_size), matvec, (like, key))
    return estimate._replace(
        value=match_layout(estimate.value, like), stderr=match_layout(estimate.stderr, like)
    )


def _hutchinson(
    matvec: Callable, like: Any, key: jax.Array, num_probes: int, batch_size: int | None
) -> DiagonalEstimate:
    flat = FlatOperator(matvec, like, _NAME)

    def sample(probe_key: jax.Array) -> jax.Array:
        z = rademacher(probe_key, flat.n, flat.dtype)
        return z * flat(z)

    samples = map_probes(sample, jax.random.split(key, num_probes), batch_size)
    return _estimate(flat, jnp.mean(samples, axis=0), samples, num_probes)


def _diag_plus_plus(
    matvec: Callable, like: Any, key: jax.Array, num_probes: int, batch_size: int | None
) -> DiagonalEstimate:
    flat = FlatOperator(matvec, like, _NAME)
    n, dtype = flat.n, flat.dtype
    wide = jnp.promote_types(dtype, jnp.float32)  # QR needs >= 32 bits
    sketch_size = min(num_probes // 3, n)
    sketch_key, residual_key = jax.random.split(key)
    sketch = jax.vmap(lambda k: rademacher(k, n, dtype))(jax.random.split(sketch_key, sketch_size))
    basis, _ = jnp.linalg.qr(map_probes(flat, sketch, batch_size).T.astype(wide))  # (n, s)
    images = map_probes(flat, basis.T.astype(dtype), batch_size).astype(wide)  # rows: A q_j
    low_rank = jnp.sum(basis * images.T, axis=1)  # diag(Q Q^T A) = sum_j q_j * (A q_j)

    def sample(probe_key: jax.Array) -> jax.Array:
        z = rademacher(probe_key, n, dtype)
        az = flat(z).astype(wide)
        return z * (az - basis @ (basis.T @ az))  # z * ((I - Q Q^T) A z)

    keys = jax.random.split(residual_key, num_probes - 2 * sketch_size)
    samples = map_probes(sample, keys, batch_size)
    return _estimate(flat, low_rank + jnp.mean(samples, axis=0), samples, num_probes)


def _estimate(
    flat: FlatOperator, value: jax.Array, samples: jax.Array, num_probes: int
) -> DiagonalEstimate:
    stderr = jnp.std(samples, axis=0, ddof=1) / jnp.sqrt(samples.shape[0])
    return DiagonalEstimate(flat.tree(value), flat.tree(stderr), jnp.asarray(num_probes))


_ESTIMATORS: dict[str, Callable] = {"hutchinson": _hutchinson, "diag++": _diag_plus_plus}
