"""The second Wolfe line search scipy's Newton-CG tries: ``line_search_wolfe2``.

Nocedal and Wright's Algorithms 3.5 and 3.6 (Numerical Optimization, 1999): the step doubles
from a first guess until a minimiser is bracketed, then the bracket is zoomed by safeguarded
cubic and quadratic interpolation. Written from the book with scipy's constants and rules
(at most 10 bracketing and 11 zoom iterations; a step found by neither phase's tests after
the 10 bracketing iterations is returned as it is; cubic steps within 20% and quadratic steps
within 10% of the bracket's ends are replaced by bisection), so that it takes the steps
scipy's takes. The objective is evaluated at every trial and its slope only where scipy's
tests need it, so ``nfev`` and ``njev`` count what runs. Two ``lax.while_loop``s, with
the slope evaluations under ``lax.cond``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._problem import count

_BRACKET_ITERATIONS, _ZOOM_ITERATIONS = 10, 10
_CUBIC_MARGIN, _QUADRATIC_MARGIN = 0.2, 0.1

# How a phase ended.
_RUNNING, _FOUND, _ZOOM, _FAILED = 0, 1, 2, 3


class _Bracket(NamedTuple):
    i: jax.Array
    a0: jax.Array  # the previous and the current step, phi at both, phi' at the previous
    a1: jax.Array
    phi_a0: jax.Array
    phi_a1: jax.Array
    dphi_a0: jax.Array
    outcome: jax.Array
    lo: jax.Array  # where the zoom starts: its low and high ends
    hi: jax.Array
    phi_lo: jax.Array
    phi_hi: jax.Array
    dphi_lo: jax.Array
    nfev: jax.Array
    njev: jax.Array
    found_slope: jax.Array  # ended by the curvature test (its slope evaluated)


class _Zoom(NamedTuple):
    j: jax.Array
    lo: jax.Array
    hi: jax.Array
    phi_lo: jax.Array
    phi_hi: jax.Array
    dphi_lo: jax.Array
    rec: jax.Array  # the end dropped last, for the cubic through three points
    phi_rec: jax.Array
    step: jax.Array
    value: jax.Array
    outcome: jax.Array
    nfev: jax.Array
    njev: jax.Array


def zoom_search(
    phi: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    phi_and_slope: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    phi0: jax.Array,
    dphi0: jax.Array,
    first_step: jax.Array,
    known: tuple[jax.Array, jax.Array, jax.Array],
    *,
    c1: jax.Array,
    c2: jax.Array,
) -> tuple[jax.Array, ...]:
    """scipy's ``scalar_search_wolfe2`` from ``first_step`` (scipy's guess, at most 1).

    ``known`` is a trial ``(step, phi, phi')`` already evaluated (the previous search's last):
    if the search starts there, it is used, not evaluated again or counted.

    Returns ``(step, value, ok, nonfinite, nfev, njev, slope_unknown)``, the fields of the line
    search's ``SearchResult``.
    """
    nan = jnp.full_like(phi0, jnp.nan)

    known_t, known_phi, known_slope = known

    def slope(need: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        return lax.cond(need, lambda: phi_and_slope(t)[1:], lambda: (nan, jnp.asarray(False)))

    def sufficient(t: jax.Array, phi_t: jax.Array) -> jax.Array:
        return ~(phi_t > phi0 + c1 * t * dphi0)

    def curvature(dphi_t: jax.Array) -> jax.Array:
        return jnp.abs(dphi_t) <= -c2 * dphi0

    def bracket(s: _Bracket) -> _Bracket:
        failed = s.a1 == 0  # the step slipped below precision
        higher = ~sufficient(s.a1, s.phi_a1) | ((s.phi_a1 >= s.phi_a0) & (s.i > 0))
        need = ~failed & ~higher
        reuse = (s.i == 0) & (s.a1 == known_t)  # the first trial, where the last search ended
        d1, d1_ran = slope(need & ~reuse, s.a1)
        d1 = jnp.where(reuse, known_slope, d1)
        found = need & curvature(d1)
        back = need & ~found & (d1 >= 0)  # past a minimiser: zoom from a1 back to a0
        extend = need & ~found & ~back
        a2 = 2 * s.a1
        phi_a2, a2_ran = lax.cond(extend, lambda: phi(a2), lambda: (s.phi_a1, jnp.asarray(False)))
        i = s.i + 1
        outcome = jnp.where(failed, _FAILED, _RUNNING)
        outcome = jnp.where(higher & ~failed, _ZOOM, outcome)
        outcome = jnp.where(back, _ZOOM, outcome)
        outcome = jnp.where(found | (extend & (i >= _BRACKET_ITERATIONS)), _FOUND, outcome)
        outcome = outcome.astype(jnp.int32)
        lo = jnp.where(back, s.a1, s.a0)
        hi = jnp.where(back, s.a0, s.a1)
        phi_lo = jnp.where(back, s.phi_a1, s.phi_a0)
        phi_hi = jnp.where(back, s.phi_a0, s.phi_a1)
        dphi_lo = jnp.where(back, d1, s.dphi_a0)
        return _Bracket(
            i=i,
            a0=jnp.where(extend, s.a1, s.a0),
            a1=jnp.where(extend, a2, s.a1),
            phi_a0=jnp.where(extend, s.phi_a1, s.phi_a0),
            phi_a1=phi_a2,
            dphi_a0=jnp.where(extend, d1, s.dphi_a0),
            outcome=outcome,
            lo=lo,
            hi=hi,
            phi_lo=phi_lo,
            phi_hi=phi_hi,
            dphi_lo=dphi_lo,
            nfev=s.nfev + a2_ran,
            njev=s.njev + d1_ran,
            found_slope=found,
        )

    zero = jnp.zeros_like(phi0)
    a1 = jnp.asarray(first_step, phi0.dtype)
    evaluated = a1 == known_t
    phi_a1, a1_ran = lax.cond(evaluated, lambda: (known_phi, jnp.asarray(False)), lambda: phi(a1))
    start = _Bracket(
        i=count(),
        a0=zero,
        a1=a1,
        phi_a0=phi0,
        phi_a1=phi_a1,
        dphi_a0=dphi0,
        outcome=count() + _RUNNING,
        lo=zero,
        hi=zero,
        phi_lo=phi0,
        phi_hi=phi0,
        dphi_lo=dphi0,
        nfev=count() + a1_ran,
        njev=count(),
        found_slope=jnp.asarray(False),
    )
    b = lax.while_loop(lambda s: s.outcome == _RUNNING, bracket, start)

    def zoom(s: _Zoom) -> _Zoom:
        step = _interpolate(s)
        phi_j, j_ran = phi(step)
        higher = ~sufficient(step, phi_j) | (phi_j >= s.phi_lo)
        d_j, d_j_ran = slope(~higher, step)
        found = ~higher & curvature(d_j)
        flip = ~higher & ~found & (d_j * (s.hi - s.lo) >= 0)
        moves_lo = ~higher & ~found
        # The dropped end: hi when hi moves (a higher value, or a flip), else lo.
        drops_hi = higher | flip
        j = s.j + 1
        outcome = jnp.where(found, _FOUND, jnp.where(j > _ZOOM_ITERATIONS, _FAILED, _RUNNING))
        outcome = outcome.astype(jnp.int32)
        return _Zoom(
            j=j,
            lo=jnp.where(moves_lo, step, s.lo),
            hi=jnp.where(higher, step, jnp.where(flip, s.lo, s.hi)),
            phi_lo=jnp.where(moves_lo, phi_j, s.phi_lo),
            phi_hi=jnp.where(higher, phi_j, jnp.where(flip, s.phi_lo, s.phi_hi)),
            dphi_lo=jnp.where(moves_lo, d_j, s.dphi_lo),
            rec=jnp.where(found, s.rec, jnp.where(drops_hi, s.hi, s.lo)),
            phi_rec=jnp.where(found, s.phi_rec, jnp.where(drops_hi, s.phi_hi, s.phi_lo)),
            step=step,
            value=phi_j,
            outcome=outcome,
            nfev=s.nfev + j_ran,
            njev=s.njev + d_j_ran,
        )

    zoom_start = _Zoom(
        j=count(),
        lo=b.lo,
        hi=b.hi,
        phi_lo=b.phi_lo,
        phi_hi=b.phi_hi,
        dphi_lo=b.dphi_lo,
        rec=zero,
        phi_rec=phi0,
        step=b.a1,
        value=b.phi_a1,
        outcome=jnp.where(b.outcome == _ZOOM, _RUNNING, b.outcome).astype(jnp.int32),
        nfev=b.nfev,
        njev=b.njev,
    )
    z = lax.while_loop(lambda s: s.outcome == _RUNNING, zoom, zoom_start)
    ok = z.outcome == _FOUND
    nonfinite = ~ok & ~jnp.isfinite(z.value)
    # Out of doublings, scipy takes the last step without its slope (so without its gradient).
    slope_unknown = (b.outcome == _FOUND) & ~b.found_slope
    return z.step, z.value, ok, nonfinite, z.nfev, z.njev, slope_unknown


def _interpolate(s: _Zoom) -> jax.Array:
    """The next zoom trial: the cubic's minimiser, else the quadratic's, else the midpoint,
    each only if it falls far enough inside the bracket."""
    width = s.hi - s.lo
    left, right = jnp.minimum(s.lo, s.hi), jnp.maximum(s.lo, s.hi)

    def inside(t: jax.Array, margin: float) -> jax.Array:
        check = margin * width
        return jnp.isfinite(t) & ~(t > right - check) & ~(t < left + check)

    cubic = _cubic_minimiser(s.lo, s.phi_lo, s.dphi_lo, s.hi, s.phi_hi, s.rec, s.phi_rec)
    quadratic = _quadratic_minimiser(s.lo, s.phi_lo, s.dphi_lo, s.hi, s.phi_hi)
    step = jnp.where(inside(quadratic, _QUADRATIC_MARGIN), quadratic, s.lo + 0.5 * width)
    return jnp.where((s.j > 0) & inside(cubic, _CUBIC_MARGIN), cubic, step)


def _cubic_minimiser(a, fa, fpa, b, fb, c, fc):
    """The minimiser of the cubic through (a, fa), (b, fb), (c, fc) with slope fpa at a;
    NaN or Inf where there is none (scipy's ``None``)."""
    db, dc = b - a, c - a
    denom = (db * dc) ** 2 * (db - dc)
    rb, rc = fb - fa - fpa * db, fc - fa - fpa * dc
    A = (dc**2 * rb - db**2 * rc) / denom
    B = (-(dc**3) * rb + db**3 * rc) / denom
    return a + (-B + jnp.sqrt(B * B - 3 * A * fpa)) / (3 * A)


def _quadratic_minimiser(a, fa, fpa, b, fb):
    """The minimiser of the quadratic through (a, fa), (b, fb) with slope fpa at a."""
    db = b - a
    B = (fb - fa - fpa * db) / (db * db)
    return a - fpa / (2.0 * B)
