"""The inner Krylov solvers: scipy's truncated CG (Newton-CG's direction) and Steihaug-Toint
CG (trust-ncg's subproblem), each one ``lax.while_loop`` over Hessian products."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._problem import count, finite


class CGResult(NamedTuple):
    """An approximate solution ``p`` of ``A p = -g``, and how the solve went."""

    p: jax.Array
    hvps: jax.Array  # products with A computed
    exhausted: jax.Array  # maxiter iterations without meeting a stopping rule
    nonfinite: jax.Array  # stopped by a product with NaN or Inf in it


class _CG(NamedTuple):
    p: jax.Array
    r: jax.Array  # residual A p + g
    d: jax.Array  # search direction
    rr: jax.Array  # r . r
    hvps: jax.Array
    done: jax.Array
    nonfinite: jax.Array


def truncated_cg(g: jax.Array, matvec: Callable, maxiter: Any) -> CGResult:
    """scipy's Newton-CG inner solve of ``A p = -g``, from ``p = 0``.

    Stops when ``|r|_1 <= min(0.5, sqrt(|g|_1)) |g|_1`` (checked before each product), when
    the curvature ``d.Ad`` is in ``[0, 3 eps]`` (keeping ``p``), or when it is negative
    (keeping ``p``, or on the first iteration taking the steepest-descent step scaled by
    ``|g|^2 / |d.Ad|``). A product with NaN or Inf in it stops the solve and is reported.
    """
    g_norm1 = jnp.sum(jnp.abs(g))
    termcond = jnp.minimum(0.5, jnp.sqrt(g_norm1)) * g_norm1
    tiny = 3 * jnp.finfo(g.dtype).eps
    no = jnp.asarray(False)
    start = _CG(jnp.zeros_like(g), g, -g, g @ g, count(), no, no)

    def keep_going(s: _CG) -> jax.Array:
        return ~s.done & (s.hvps < maxiter) & (jnp.sum(jnp.abs(s.r)) > termcond)

    def iterate(s: _CG) -> _CG:
        Ad = matvec(s.d)
        curvature = s.d @ Ad
        nonfinite = ~finite(Ad)
        stop = (curvature <= tiny) | nonfinite  # (near-)zero or negative curvature
        # Negative curvature at once: d = -g, so take the steepest-descent step scaled by
        # |g|^2 / |d.Ad|.
        steepest = (curvature < 0) & (s.hvps == 0)
        alpha = s.rr / curvature
        r = s.r + alpha * Ad  # r and d are not used once stopped
        rr = r @ r
        p = jnp.where(stop, jnp.where(steepest, (s.rr / -curvature) * s.d, s.p), s.p + alpha * s.d)
        return _CG(p, r, -r + (rr / s.rr) * s.d, rr, s.hvps + 1, stop, nonfinite)

    final = lax.while_loop(keep_going, iterate, start)
    exhausted = ~final.done & (final.hvps >= maxiter)
    return CGResult(final.p, final.hvps, exhausted, final.nonfinite)


class Subproblem(NamedTuple):
    """An approximate minimiser ``p`` of ``g.p + p.Hp/2`` over ``|p| <= radius``, with ``Hp``."""

    p: jax.Array
    Hp: jax.Array
    on_boundary: jax.Array
    hvps: jax.Array
    nonfinite: jax.Array  # stopped by a product with NaN or Inf in it


# How the CG iterations ended: still inside (converged or out of iterations), or leaving the
# region along d, by negative curvature or by a step too long.
_INSIDE, _NEGATIVE_CURVATURE, _TOO_LONG = 0, 1, 2


class _Steihaug(NamedTuple):
    z: jax.Array  # the iterate, and H z by recurrence
    Hz: jax.Array
    r: jax.Array  # the residual H z + g
    d: jax.Array  # the direction, and H d from the last product
    Bd: jax.Array
    rr: jax.Array
    hvps: jax.Array
    exit: jax.Array  # _INSIDE, or where the boundary is to be found along d
    done: jax.Array
    nonfinite: jax.Array


def steihaug_cg(g: jax.Array, matvec: Callable, radius: jax.Array, maxiter: Any) -> Subproblem:
    """scipy's ``CGSteihaugSubproblem.solve``, with at most ``maxiter`` Hessian products.

    The loop only iterates CG; the boundary point, when the iterations leave the region, is
    computed once afterwards. If the limit is reached, the last iterate (inside the region)
    is returned. A product with NaN or Inf in it stops the solve and is reported.
    """
    g_norm = jnp.linalg.norm(g)
    tolerance = jnp.minimum(0.5, jnp.sqrt(g_norm)) * g_norm
    zeros = jnp.zeros_like(g)
    no = jnp.asarray(False)
    inside = jnp.asarray(_INSIDE, jnp.int32)
    start = _Steihaug(zeros, zeros, g, -g, zeros, g @ g, count(), inside, g_norm <= tolerance, no)

    def iterate(s: _Steihaug) -> _Steihaug:
        Bd = matvec(s.d)
        curvature = s.d @ Bd
        alpha = s.rr / curvature
        z = s.z + alpha * s.d
        r = s.r + alpha * Bd
        rr = r @ r
        exit = jnp.where(jnp.linalg.norm(z) >= radius, _TOO_LONG, inside)
        exit = jnp.where(curvature <= 0, _NEGATIVE_CURVATURE, exit)
        nonfinite = ~finite(Bd)
        leaving = exit != _INSIDE
        # Leaving: keep z, the boundary point along d is found after the loop.
        return _Steihaug(
            z=jnp.where(leaving, s.z, z),
            Hz=jnp.where(leaving, s.Hz, s.Hz + alpha * Bd),
            r=r,
            d=jnp.where(leaving, s.d, -r + (rr / s.rr) * s.d),
            Bd=Bd,
            rr=rr,
            hvps=s.hvps + 1,
            exit=exit,
            done=leaving | (jnp.sqrt(rr) < tolerance) | nonfinite,
            nonfinite=nonfinite,
        )

    def keep_going(s: _Steihaug) -> jax.Array:
        return ~s.done & (s.hvps < maxiter)

    s = lax.while_loop(keep_going, iterate, start)
    # Leaving the region along d: on negative curvature, the intersection with the lower
    # model value; on a step too long, the one ahead.
    t_low, t_high = _boundary_steps(s.z, s.d, radius)

    def model(t: jax.Array) -> jax.Array:
        p, Hp = s.z + t * s.d, s.Hz + t * s.Bd
        return g @ p + 0.5 * (p @ Hp)

    lower = (s.exit == _NEGATIVE_CURVATURE) & (model(t_low) < model(t_high))
    t = jnp.where(lower, t_low, t_high)
    on_boundary = s.exit != _INSIDE
    p = jnp.where(on_boundary, s.z + t * s.d, s.z)
    Hp = jnp.where(on_boundary, s.Hz + t * s.Bd, s.Hz)
    return Subproblem(p, Hp, on_boundary, s.hvps, s.nonfinite)


def _boundary_steps(z: jax.Array, d: jax.Array, radius: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The roots ``t_low <= t_high`` of ``|z + t d| = radius``, in the cancellation-free form."""
    a = d @ d
    b = 2 * (z @ d)
    c = z @ z - radius**2
    root = jnp.sqrt(b * b - 4 * a * c)
    aux = b + jnp.where(b >= 0, root, -root)  # b + copysign(root, b)
    t1, t2 = -aux / (2 * a), -2 * c / aux
    return jnp.minimum(t1, t2), jnp.maximum(t1, t2)
