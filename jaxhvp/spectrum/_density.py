"""``density``: the spectral density of a Hessian by stochastic Lanczos quadrature (SLQ).

Each Rademacher probe ``z`` gives, by ``krylov_dim`` Lanczos steps, a Gauss quadrature rule
(nodes ``theta_j``, weights ``w_j`` summing to 1) for its spectral measure ``sum_i (u_i^T
z)^2 / n delta(lambda - lambda_i)``; averaged over probes it estimates the eigenvalue
density ``phi(lambda) = (1/n) sum_i delta(lambda - lambda_i)``, which is then smoothed with a
Gaussian kernel of width ``sigma`` (Lin, Saad and Yang, 2016; Ghorbani, Krishnan and Xiao,
2019; PyHessian's ``density``). The Lanczos kernel is ``_lanczos.projection`` (see there why
it is not matfree's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import HVPError
from .._validate import check_count, check_key
from . import _lanczos
from ._operand import (
    FlatOperator,
    check_batch_size,
    compiled_call,
    map_probes,
    operand,
    rademacher,
    size_of,
)

_NAME = "density"
RELATIVE_SIGMA = 1 / 200  # the default kernel width, as a fraction of the nodes' spread
PAD = 6  # the automatic grid extends this many sigmas beyond the extreme nodes


class Density(NamedTuple):
    """A smoothed spectral density from :func:`density`.

    Attributes:
      grid: ``(num_points,)`` increasing eigenvalue points.
      density: ``(num_points,)``, the smoothed density at ``grid``; on the automatic grid
        it integrates to 1 (``jnp.trapezoid(density, grid)``, up to ``1e-8``).
      nodes: ``(num_probes, krylov_dim)`` Gauss quadrature nodes (Ritz values) per probe.
      weights: ``(num_probes, krylov_dim)`` their weights; each row sums to 1.
      sigma: the Gaussian kernel's standard deviation.
    """

    grid: jax.Array
    density: jax.Array
    nodes: jax.Array
    weights: jax.Array
    sigma: jax.Array


def density(
    op: Any,
    *,
    key: jax.Array,
    like: Any = None,
    num_probes: int = 10,
    krylov_dim: int | None = None,
    grid: int | jax.Array = 1024,
    sigma: float | None = None,
    probe_batch_size: int | None = None,
) -> Density:
    """The eigenvalue density of a symmetric operator, by stochastic Lanczos quadrature.

    ``density(t) = mean over probes of sum_j w_j N(t; theta_j, sigma^2)``: each probe's
    Lanczos tridiagonalisation gives nodes ``theta_j`` (which lie in ``[lambda_min,
    lambda_max]`` and include good approximations of the extreme eigenvalues) and weights
    ``w_j``. Its moments of order below ``2 krylov_dim`` are unbiased estimates of those of
    the eigenvalue distribution (``sum_j w_j theta_j`` averages to ``tr(H) / n``).

    Costs ``num_probes * krylov_dim`` Hessian products, and ``(krylov_dim + 1) * n`` numbers
    of memory per probe in flight (the Lanczos basis, fully reorthogonalised).

    Args:
      op: a :class:`jaxhvp.HessianOperator` or a symmetric ``matvec(v)`` with ``like``.
      key: a PRNG key for the probes.
      like: only with a plain ``matvec``: the vectors' structure.
      num_probes: the number of Rademacher probes (independent Lanczos runs).
      krylov_dim: Lanczos steps per probe; default ``min(n, 64)``, at most ``n``.
      grid: the number of points of an automatic grid, which spans the nodes plus
        ``6 sigma`` on each side; or a 1-D array of points of your choice.
      sigma: the Gaussian kernel's standard deviation; default 1/200 of the spread of the
        nodes (of their magnitude if they all coincide), and at least ``sqrt(eps)`` times
        their largest magnitude.
      probe_batch_size: if given, this many probes are run at a time (``lax.map``);
        otherwise all at once (``vmap``). The probes, and so the result, do not depend on
        it.

    Returns:
      A :class:`Density` ``(grid, density, nodes, weights, sigma)``, a pytree.

    Raises:
      TypeError: as :func:`eigenvalues`, or ``grid`` neither an int nor an array.
      HVPError: invalid counts, a non-positive ``sigma``, a ``grid`` array that is not 1-D.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> import jaxhvp.spectrum
      >>> d = jnp.array([1.0, 1.0, 1.0, 3.0])
      >>> op = jaxhvp.hessian_operator(lambda x: 0.5 * jnp.sum(d * x**2), jnp.ones(4))
      >>> dens = jaxhvp.spectrum.density(op, key=jax.random.key(0), num_probes=20)
      >>> round(float(jnp.trapezoid(dens.density, dens.grid)), 4)
      1.0
      >>> float(dens.grid[0]) < 1.0 and float(dens.grid[-1]) > 3.0
      True
      >>> round(float(jnp.sum(dens.weights * dens.nodes) / 20), 1)  # ~ tr(H) / n = 1.5
      1.5
    """
    matvec, like = operand(op, like, _NAME)
    key = check_key(key, _NAME)
    n = size_of(like)
    num_probes = check_count(num_probes, "num_probes", _NAME)
    krylov_dim = min(n, 64) if krylov_dim is None else check_count(krylov_dim, "krylov_dim", _NAME)
    batch_size = check_batch_size(probe_batch_size, _NAME)
    points, num_points = _check_grid(grid)
    options = (num_probes, min(krylov_dim, n), num_points, _check_sigma(sigma), batch_size)
    return compiled_call(_density, options, matvec, (like, key, points))


def _check_grid(grid: Any) -> tuple[jax.Array | None, int | None]:
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        return None, check_count(grid, "grid (a number of points)", _NAME, minimum=2)
    if isinstance(grid, (jax.Array, np.ndarray)):
        if jnp.ndim(grid) != 1 or jnp.size(grid) < 1:
            msg = (
                f"grid given to {_NAME} must be a number of points or a 1-D array of points, "
                f"but got an array of shape {tuple(jnp.shape(grid))}. Use jnp.ravel(grid)."
            )
            raise HVPError(msg)
        return jnp.asarray(grid), None
    msg = f"grid given to {_NAME} must be an int or a 1-D array, but got {type(grid)}."
    raise TypeError(msg)


def _check_sigma(sigma: Any) -> float | None:
    if sigma is None:
        return None
    number = isinstance(sigma, (int, float, np.floating)) and not isinstance(sigma, bool)
    if number and sigma > 0 and math.isfinite(sigma):
        return float(sigma)
    msg = f"sigma given to {_NAME} must be a positive number or None, but got {sigma!r}."
    raise HVPError(msg)


def _density(
    matvec: Callable,
    like: Any,
    key: jax.Array,
    points: jax.Array | None,
    num_probes: int,
    krylov_dim: int,
    num_points: int | None,
    sigma: float | None,
    batch_size: int | None,
) -> Density:
    flat = FlatOperator(matvec, like, _NAME)

    def one(probe_key: jax.Array) -> jax.Array:
        start_key, lanczos_key = jax.random.split(probe_key)
        v0 = rademacher(start_key, flat.n, flat.dtype)
        return _lanczos.projection(flat, v0, krylov_dim, lanczos_key)

    projections = map_probes(one, jax.random.split(key, num_probes), batch_size)
    nodes, weights = _lanczos.quadrature(projections)
    low, high = jnp.min(nodes), jnp.max(nodes)
    if sigma is None:
        # Nodes closer than rounding (a repeated eigenvalue) must not give a kernel narrower
        # than the dtype can resolve: sigma is at least sqrt(eps) times the largest node.
        magnitude = jnp.max(jnp.abs(nodes))
        width = jnp.where(high > low, high - low, jnp.where(magnitude > 0, magnitude, 1))
        floor = np.sqrt(np.finfo(flat.dtype).eps) * magnitude
        sigma = jnp.maximum(RELATIVE_SIGMA * width, floor)
    sigma = jnp.asarray(sigma, flat.dtype)
    if points is None:
        grid = jnp.linspace(low - PAD * sigma, high + PAD * sigma, num_points, dtype=flat.dtype)
    else:
        grid = points.astype(flat.dtype)
    z = (grid[:, None] - nodes.reshape(-1)[None, :]) / sigma
    kernel = jnp.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    values = kernel @ weights.reshape(-1) / num_probes
    return Density(grid, values, nodes, weights, sigma)
