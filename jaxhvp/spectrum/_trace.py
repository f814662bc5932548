"""``trace``: Hutchinson, Hutch++ and XTrace estimates of a Hessian's trace, with errors.

Hutchinson's estimator uses ``matfree``'s Rademacher sampler and trace integrand on the
operator seen over flat vectors (matfree flattens a pytree the same way, so the probes are
the same; the flat view also works where the leaves carry explicit shardings), one probe per
key, so a chunk of probes is exactly the same probes whatever the chunk size. Hutch++
(Meyer, Musco, Musco and Woodruff, 2021) is written here: matfree does not provide it; its
nearest relative there, XTrace (``matfree.stochtrace.leave_one_out_xtrace``, offered as
``method="xtrace"``), applies the operator to all probes at once (a ``vmap``), so it cannot
bound memory by chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._errors import HVPError
from .._validate import check_choice, check_count, check_key
from ._operand import (
    FlatOperator,
    check_batch_size,
    compiled_call,
    map_probes,
    operand,
    rademacher,
    require_matfree,
    size_of,
)

_NAME = "trace"
METHODS = ("hutch++", "hutchinson", "xtrace")
_MINIMUM_PROBES = {"hutch++": 4, "hutchinson": 2, "xtrace": 2}


class TraceEstimate(NamedTuple):
    """A stochastic trace estimate from :func:`trace`.

    Attributes:
      value: the estimate of ``tr(H)``.
      stderr: its standard error: the sample standard deviation of the per-probe estimates
        over ``sqrt(number of probes)`` (for Hutch++, of the residual's Hutchinson probes
        given the sketch; for XTrace, of the leave-one-out estimates). Zero when the
        estimate is exact (Hutch++ or XTrace on a matrix of rank below the sketch size).
      num_matvecs: the Hessian products used.
    """

    value: jax.Array
    stderr: jax.Array
    num_matvecs: jax.Array


def trace(
    op: Any,
    *,
    key: jax.Array,
    num_probes: int,
    method: str = "hutch++",
    like: Any = None,
    probe_batch_size: int | None = None,
) -> TraceEstimate:
    """Estimates ``tr(H)`` from Hessian-vector products with random probes.

    * ``"hutch++"`` (default): a rank-``s`` sketch ``Q`` of ``H`` from ``s = num_probes // 3``
      Rademacher probes, the exact trace of ``Q^T H Q``, plus Hutchinson's estimate on the
      deflated rest with the remaining ``num_probes - 2 s`` probes. Exact when ``rank(H) <=
      s``; far more accurate than Hutchinson when a few eigenvalues carry most of
      ``||H||_F`` (outliers, as in trained networks' Hessians); on a flat spectrum (a network
      at initialisation) its standard error is up to ``sqrt(3)`` times Hutchinson's for the
      same products, since a third of them probe the rest. ``num_probes`` products; at
      least 4.
    * ``"hutchinson"``: the mean of ``z^T H z`` over Rademacher probes ``z``. ``num_probes``
      products; at least 2.
    * ``"xtrace"``: matfree's XTrace (Epperly, Tropp and Webber, 2024), with normal probes:
      exchangeable Hutch++, usually the most accurate for a budget. ``2 num_probes``
      products (or ``n`` when ``2 num_probes >= n``: matfree then materialises ``H``), all at
      once: it does not take ``probe_batch_size``. ``num_probes <= n``.

    Args:
      op: a :class:`jaxhvp.HessianOperator` or a symmetric ``matvec(v)`` with ``like``.
      key: a PRNG key for the probes.
      num_probes: the number of probes (see above for how many products each method uses).
      method: ``"hutch++"``, ``"hutchinson"`` or ``"xtrace"``.
      like: only with a plain ``matvec``: the vectors' structure (arrays or
        ``jax.ShapeDtypeStruct``).
      probe_batch_size: if given, products are computed this many probes at a time
        (``lax.map``), bounding memory to that many products in flight; otherwise all at
        once (``vmap``). The probes, and so the estimate, do not depend on it.

    Returns:
      A :class:`TraceEstimate` ``(value, stderr, num_matvecs)``, a pytree.

    Raises:
      TypeError: as :func:`eigenvalues`.
      HVPError: an unknown ``method``, too few probes, ``num_probes > n`` for XTrace,
        ``probe_batch_size`` with XTrace.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> import jaxhvp.spectrum
      >>> a = jnp.array([1.0, 2.0, -1.0, 0.5])
      >>> op = jaxhvp.hessian_operator(lambda x: 0.5 * (a @ x) ** 2, jnp.ones(4))
      >>> est = jaxhvp.spectrum.trace(op, key=jax.random.key(0), num_probes=6)
      >>> round(float(est.value), 4), round(float(est.stderr), 4)  # rank 1: exact
      (6.25, 0.0)

      Hutchinson's estimator is exact for a diagonal matrix (Rademacher probes):

      >>> op = jaxhvp.hessian_operator(lambda x: jnp.sum(x**4), jnp.array([1.0, 2.0, 3.0]))
      >>> est = jaxhvp.spectrum.trace(
      ...     op, key=jax.random.key(0), num_probes=10, method="hutchinson", probe_batch_size=4
      ... )
      >>> float(est.value), int(est.num_matvecs)
      (168.0, 10)
    """
    matvec, like = operand(op, like, _NAME)
    key = check_key(key, _NAME)
    method = check_choice(method, "method", METHODS, _NAME)
    minimum = _MINIMUM_PROBES[method]
    num_probes = check_count(num_probes, "num_probes", _NAME, minimum=minimum)
    batch_size = check_batch_size(probe_batch_size, _NAME)
    if method != "hutch++":
        require_matfree(f"{_NAME}(method={method!r})")
    if method == "xtrace":
        n = size_of(like)
        if num_probes > n:
            msg = (
                f"method='xtrace' takes at most n = {n} probes (the operator's dimension), "
                f"but num_probes = {num_probes}. Use num_probes <= {n}."
            )
            raise HVPError(msg)
        if batch_size is not None:
            msg = (
                "method='xtrace' (matfree's XTrace) applies the operator to all probes at "
                f"once and cannot chunk them, but probe_batch_size = {batch_size} was given. "
                "Drop probe_batch_size, or use method='hutch++' to bound memory."
            )
            raise HVPError(msg)
    return compiled_call(_ESTIMATORS[method], (num_probes, batch_size), matvec, (like, key))


def _hutchinson(
    matvec: Callable, like: Any, key: jax.Array, num_probes: int, batch_size: int | None
) -> TraceEstimate:
    from matfree import stochtrace

    flat = FlatOperator(matvec, like, _NAME)  # matfree samples flat vectors and unravels them
    integrand = stochtrace.monte_carlo_trace()
    sampler = stochtrace.sampler_signs(flat.zeros, num=1)

    def one(probe_key: jax.Array) -> jax.Array:
        return integrand(flat, sampler(probe_key)[0])

    samples = map_probes(one, jax.random.split(key, num_probes), batch_size)
    return TraceEstimate(jnp.mean(samples), _stderr(samples), jnp.asarray(num_probes))


def _hutch_plus_plus(
    matvec: Callable, like: Any, key: jax.Array, num_probes: int, batch_size: int | None
) -> TraceEstimate:
    flat = FlatOperator(matvec, like, _NAME)
    n, dtype = flat.n, flat.dtype
    sketch_size = min(num_probes // 3, n)
    num_residual = num_probes - 2 * sketch_size
    sketch_key, residual_key = jax.random.split(key)
    sketch = jax.vmap(lambda k: rademacher(k, n, dtype))(jax.random.split(sketch_key, sketch_size))
    basis, _ = jnp.linalg.qr(map_probes(flat, sketch, batch_size).T)  # (n, s), orthonormal
    images = map_probes(flat, basis.T, batch_size)
    low_rank = jnp.sum(basis.T * images)  # tr(Q^T H Q)

    def residual_sample(probe_key: jax.Array) -> jax.Array:
        z = rademacher(probe_key, n, dtype)
        z = z - basis @ (basis.T @ z)  # (I - Q Q^T) z
        return z @ flat(z)

    keys = jax.random.split(residual_key, num_residual)
    samples = map_probes(residual_sample, keys, batch_size)
    return TraceEstimate(low_rank + jnp.mean(samples), _stderr(samples), jnp.asarray(num_probes))


def _xtrace(
    matvec: Callable, like: Any, key: jax.Array, num_probes: int, batch_size: None
) -> TraceEstimate:
    from matfree import stochtrace

    flat = FlatOperator(matvec, like, _NAME)
    estimate = stochtrace.estimator_leave_one_out_mean_and_sem(
        stochtrace.leave_one_out_xtrace(), stochtrace.sampler_normal(flat.zeros, num=num_probes)
    )
    value, stderr = estimate(flat, key)
    materialised = 2 * num_probes >= flat.n
    num_matvecs = flat.n if materialised else 2 * num_probes
    return TraceEstimate(value, stderr, jnp.asarray(num_matvecs))


def _stderr(samples: jax.Array) -> jax.Array:
    return jnp.std(samples, ddof=1) / jnp.sqrt(samples.size)


_ESTIMATORS: dict[str, Callable] = {
    "hutch++": _hutch_plus_plus,
    "hutchinson": _hutchinson,
    "xtrace": _xtrace,
}
