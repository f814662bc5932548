"""A Wolfe line search for compiled loops: Moré and Thuente's safeguarded search (MINPACK-2's
``dcsrch``), the search scipy's Newton-CG uses (``scipy.optimize.line_search_wolfe1``).

Written from the published algorithm (J. J. Moré and D. J. Thuente, "Line search algorithms
with guaranteed sufficient decrease", ACM TOMS 20, 1994) with scipy's constants and checked
against scipy's behaviour: the same trial-step rules, interval updates and stopping tests,
so that a Newton-CG solve takes the steps scipy takes. Branches become
``jnp.where`` selects and the search is one ``lax.while_loop``, so it runs under ``jax.jit``
and ``jax.vmap``.

One difference from scipy, on a path where scipy gives up on this search:

* a trial step where the objective or its slope is NaN or Inf is not a failure here: the step
  is halved towards the best step so far, which also becomes the largest step allowed;
* none other: when this search fails, :func:`search` retries with scipy's second search
  (``_zoom_search``, scipy's ``line_search_wolfe2``), as scipy's ``_line_search_wolfe12``
  does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._problem import count, finite
from ._zoom_search import zoom_search

# The search's ``task`` (scipy's byte strings), as ints for the loop.
_EVALUATE, _CONVERGED, _WARNING, _ERROR = 0, 1, 2, 3

# Moré-Thuente constants: bisection when the interval shrinks by less than 0.66; trial steps
# extrapolate between 1.1 and 4 times the last move while no minimiser is bracketed.
_P66, _EXTRAPOLATE_MIN, _EXTRAPOLATE_MAX = 0.66, 1.1, 4.0


class SearchResult(NamedTuple):
    """The step found: its length, ``phi`` there, whether it is acceptable, whether the
    search failed on a NaN or Inf, how many values and slopes it evaluated (scipy's ``fc``
    and ``gc``), and whether the gradient at the step is unknown to scipy (the zoom search
    ran out of doublings and returned a step without its slope)."""

    step: jax.Array
    value: jax.Array
    ok: jax.Array
    nonfinite: jax.Array
    nfev: jax.Array
    njev: jax.Array
    slope_unknown: jax.Array


class _State(NamedTuple):
    stp: jax.Array  # the trial step, and phi, phi' there once evaluated
    f: jax.Array
    g: jax.Array
    stx: jax.Array  # the best step so far: least phi - c1 * step * phi'(0)
    fx: jax.Array
    gx: jax.Array
    sty: jax.Array  # the other end of the interval
    fy: jax.Array
    gy: jax.Array
    stmin: jax.Array  # where the next trial step may fall
    stmax: jax.Array
    width: jax.Array  # the interval widths of the last two iterations (bisection test)
    width1: jax.Array
    brackt: jax.Array  # whether a minimiser lies in [stx, sty]
    stage2: jax.Array  # whether psi(stp) <= 0 and phi'(stp) >= 0 was seen
    stpmax: jax.Array  # amax, lowered below any step where phi was not finite
    task: jax.Array
    calls: jax.Array  # iterations of the search (scipy's maxiter counts these)
    evaluations: jax.Array
    evaluated: jax.Array  # the step f and g were last evaluated at (NaN before any)


def wolfe_search(
    phi: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    phi0: jax.Array,
    dphi0: jax.Array,
    initial_step: jax.Array,
    *,
    c1: jax.Array,
    c2: jax.Array,
    xtol: float = 1e-14,
    amin: float = 1e-8,
    amax: float = 50.0,
    maxiter: int = 100,
) -> tuple[SearchResult, tuple[jax.Array, jax.Array, jax.Array]]:
    """A step satisfying the strong Wolfe conditions for ``phi(t) = f(x + t p)``.

    ``phi(t)`` returns ``(phi(t), phi'(t), ran)``, ``ran`` False where the values were known
    without running the objective (not counted); ``phi0`` and ``dphi0 < 0`` are the values
    at 0.
    The defaults are scipy's ``line_search_wolfe1``'s. On failure (``ok`` False) ``step`` is
    meaningless and the caller keeps its point. Also returns the last trial evaluated,
    ``(step, phi, phi')``.
    """
    as_float = functools.partial(jnp.asarray, dtype=phi0.dtype)
    stp = as_float(initial_step)
    gtest = c1 * dphi0
    invalid = (stp < amin) | (stp > amax) | ~(dphi0 < 0) | ~finite(phi0, dphi0)
    zero = as_float(0.0)
    width = as_float(amax - amin)
    state = _State(
        stp=stp,
        f=phi0,
        g=dphi0,
        stx=zero,
        fx=phi0,
        gx=dphi0,
        sty=zero,
        fy=phi0,
        gy=dphi0,
        stmin=zero,
        stmax=stp + _EXTRAPOLATE_MAX * stp,
        width=width,
        width1=width / 0.5,
        brackt=jnp.asarray(False),
        stage2=jnp.asarray(False),
        stpmax=as_float(amax),
        task=jnp.where(invalid, _ERROR, jnp.asarray(_EVALUATE, jnp.int32)),
        calls=count() + 1,
        evaluations=count(),
        evaluated=jnp.full_like(stp, jnp.nan),
    )

    def keep_going(s: _State) -> jax.Array:
        return (s.task == _EVALUATE) & (s.calls < maxiter)

    stpmin = as_float(amin)

    def next_trial(s: _State) -> _State:
        return _next_trial(s, phi0, gtest, xtol, stpmin)

    def iterate(s: _State) -> _State:
        f, g, ran = phi(s.stp)
        s = s._replace(
            f=f, g=g, evaluations=s.evaluations + ran, calls=s.calls + 1, evaluated=s.stp
        )
        task, stage2 = _test(s, phi0, gtest, c2 * -dphi0, xtol, stpmin)
        s = s._replace(task=task, stage2=stage2)
        # Only one branch runs (outside vmap): most searches stop at their first trial.
        branch = jnp.where(finite(f, g), jnp.where(task == _EVALUATE, 1, 2), 0)
        return lax.switch(branch, (_halve, next_trial, lambda s: s), s)

    final = lax.while_loop(keep_going, iterate, state)
    ok = final.task == _CONVERGED
    nonfinite = ~ok & ~finite(final.f, final.g)
    result = SearchResult(
        final.stp, final.f, ok, nonfinite, final.evaluations, final.evaluations, ok & False
    )
    return result, (final.evaluated, final.f, final.g)


def _halve(s: _State) -> _State:
    """A trial where phi or phi' is not finite: halve towards stx, and never go past it again."""
    stp = s.stx + 0.5 * (s.stp - s.stx)
    task = jnp.where(jnp.isfinite(stp) & (stp > s.stx), s.task * 0 + _EVALUATE, _WARNING)
    return s._replace(stp=stp, stpmax=stp, stmax=jnp.minimum(s.stmax, stp), task=task)


def _test(s: _State, finit, gtest, curvature, xtol: float, stpmin) -> tuple[Any, Any]:
    """The tests after phi and phi' were evaluated at ``s.stp``: ``(task, stage2)``.

    ``gtest = c1 phi'(0)`` is the sufficient-decrease slope, ``curvature = c2 |phi'(0)|``.
    """
    stp, f, g = s.stp, s.f, s.g
    ftest = finit + stp * gtest
    stage2 = s.stage2 | ((f <= ftest) & (g >= 0))
    # The stopping tests, in scipy's order: a later one overrides an earlier one.
    task = jnp.asarray(_EVALUATE, jnp.int32)
    task = jnp.where(s.brackt & ((stp <= s.stmin) | (stp >= s.stmax)), _WARNING, task)
    task = jnp.where(s.brackt & (s.stmax - s.stmin <= xtol * s.stmax), _WARNING, task)
    task = jnp.where((stp == s.stpmax) & (f <= ftest) & (g <= gtest), _WARNING, task)
    task = jnp.where((stp == stpmin) & ((f > ftest) | (g >= gtest)), _WARNING, task)
    task = jnp.where((f <= ftest) & (jnp.abs(g) <= curvature), _CONVERGED, task)
    return task, stage2


def _next_trial(s: _State, finit, gtest, xtol: float, stpmin) -> _State:
    """The next trial step and interval, when the tests did not stop the search."""
    stp, f, g = s.stp, s.f, s.g
    # In the first stage, while phi has decreased but not sufficiently, the step is chosen on
    # psi(t) = phi(t) - gtest t, whose minimisers bracket one of phi's.
    modified = ~s.stage2 & (f <= s.fx) & (f > finit + stp * gtest)
    shift = jnp.where(modified, gtest, 0.0)
    stx, fx, gx, sty, fy, gy, new_stp, brackt = _step(
        s.stx,
        s.fx - s.stx * shift,
        s.gx - shift,
        s.sty,
        s.fy - s.sty * shift,
        s.gy - shift,
        stp,
        f - stp * shift,
        g - shift,
        s.brackt,
        s.stmin,
        s.stmax,
    )
    fx, fy, gx, gy = fx + stx * shift, fy + sty * shift, gx + shift, gy + shift

    # Bisect when the bracket did not shrink enough over the last two iterations.
    interval = jnp.abs(sty - stx)
    new_stp = jnp.where(brackt & (interval >= _P66 * s.width1), stx + 0.5 * (sty - stx), new_stp)
    width1 = jnp.where(brackt, s.width, s.width1)
    width = jnp.where(brackt, interval, s.width)

    stmin = jnp.where(brackt, jnp.minimum(stx, sty), new_stp + _EXTRAPOLATE_MIN * (new_stp - stx))
    stmax = jnp.where(brackt, jnp.maximum(stx, sty), new_stp + _EXTRAPOLATE_MAX * (new_stp - stx))
    new_stp = jnp.clip(new_stp, stpmin, s.stpmax)
    # No progress possible: try the best step so far.
    stuck = brackt & ((new_stp <= stmin) | (new_stp >= stmax) | (stmax - stmin <= xtol * stmax))
    new_stp = jnp.where(stuck, stx, new_stp)
    task = jnp.where(jnp.isfinite(new_stp), s.task, _WARNING)
    return s._replace(
        stp=new_stp,
        stx=stx,
        fx=fx,
        gx=gx,
        sty=sty,
        fy=fy,
        gy=gy,
        stmin=stmin,
        stmax=stmax,
        width=width,
        width1=width1,
        brackt=brackt,
        task=task,
    )


def _cubic_minimisers(t0, f0, d0, t1, f1, d1, clamp):
    """Minimisers of the cubics through (t0, f0, d0) and (t1, f1, d1), elementwise.

    In Moré and Thuente's overflow-safe form (scaled by the largest of theta, d0, d1). Where
    ``clamp``, a negative discriminant counts as 0 (the cubic has no minimiser: ``gamma``
    is then 0). Returns the minimisers, ``t1 + r (t0 - t1)``, and ``r`` and ``gamma``.
    """
    theta = 3.0 * (f0 - f1) / (t1 - t0) + d0 + d1
    scale = jnp.maximum(jnp.maximum(jnp.abs(theta), jnp.abs(d0)), jnp.abs(d1))
    radicand = (theta / scale) ** 2 - (d0 / scale) * (d1 / scale)
    gamma = scale * jnp.sqrt(jnp.where(clamp, jnp.maximum(radicand, 0.0), radicand))
    gamma = jnp.where(t1 > t0, -gamma, gamma)
    r = ((gamma - d1) + theta) / (((gamma - d1) + gamma) + d0)
    return t1 + r * (t0 - t1), r, gamma


def _step(stx, fx, dx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax):
    """Moré and Thuente's safeguarded step (``dcstep``): a new trial step and interval.

    Four cases, by what the new trial (stp, fp, dp) says relative to the best step
    (stx, fx, dx); each proposes a step from cubic, quadratic or secant interpolation. The
    four cubic steps are computed together, as one vector (it compiles faster).
    """
    sgnd = jnp.sign(dp) * jnp.sign(dx)
    secant = stp + (dp / (dp - dx)) * (stx - stp)
    # Cases 1-4 below: the cubic through the best and the trial step (twice: in case 3 the
    # cubic may have no minimiser), and through the trial step and the interval's other end.
    cubics, r, gamma = _cubic_minimisers(
        jnp.stack([stp, stx, stx, sty]),
        jnp.stack([fp, fx, fx, fy]),
        jnp.stack([dp, dx, dx, dy]),
        jnp.stack([stx, stp, stp, stp]),
        jnp.stack([fx, fp, fp, fp]),
        jnp.stack([dx, dp, dp, dp]),
        jnp.array([False, False, True, False]),
    )
    toward_bound = jnp.where(stp > stx, stpmax, stpmin)

    # 1. A higher value: a minimiser is bracketed. Take the cubic step if it is closer to stx
    #    than the quadratic step, else their mean.
    quadratic = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
    higher = jnp.where(
        jnp.abs(cubics[0] - stx) <= jnp.abs(quadratic - stx),
        cubics[0],
        cubics[0] + (quadratic - cubics[0]) / 2.0,
    )

    # 2. A lower value, slopes of opposite signs: bracketed. The cubic step if it is farther
    #    from stp than the secant step, else the secant step.
    opposite = jnp.where(jnp.abs(cubics[1] - stp) > jnp.abs(secant - stp), cubics[1], secant)

    # 3. A lower value, slopes of the same sign, decreasing in magnitude. The cubic step only
    #    if the cubic tends to infinity in the step's direction or its minimum lies beyond stp.
    cubic = jnp.where((r[2] < 0) & (gamma[2] != 0), cubics[2], toward_bound)
    closer = jnp.abs(cubic - stp) < jnp.abs(secant - stp)
    farther = jnp.abs(cubic - stp) > jnp.abs(secant - stp)
    limit = stp + _P66 * (sty - stp)
    bracketed = jnp.where(closer, cubic, secant)
    bracketed = jnp.where(stp > stx, jnp.minimum(limit, bracketed), jnp.maximum(limit, bracketed))
    unbracketed = jnp.clip(jnp.where(farther, cubic, secant), stpmin, stpmax)
    decreasing = jnp.where(brackt, bracketed, unbracketed)

    # 4. A lower value, slopes of the same sign, not decreasing in magnitude: the cubic step
    #    towards sty if bracketed, else the bound in the step's direction.
    steep = jnp.where(brackt, cubics[3], toward_bound)

    higher_value = fp > fx
    new_step = jnp.where(
        higher_value,
        higher,
        jnp.where(sgnd < 0, opposite, jnp.where(jnp.abs(dp) < jnp.abs(dx), decreasing, steep)),
    )
    brackt = brackt | higher_value | (sgnd < 0)

    # The new interval: stp replaces sty after a higher value, else it becomes the best step
    # (and the old best becomes the other end when the slopes had opposite signs).
    swap = ~higher_value & (sgnd < 0)
    sty, fy, dy = (
        jnp.where(higher_value, stp, jnp.where(swap, stx, sty)),
        jnp.where(higher_value, fp, jnp.where(swap, fx, fy)),
        jnp.where(higher_value, dp, jnp.where(swap, dx, dy)),
    )
    stx, fx, dx = (
        jnp.where(higher_value, stx, stp),
        jnp.where(higher_value, fx, fp),
        jnp.where(higher_value, dx, dp),
    )
    return stx, fx, dx, sty, fy, dy, new_step, brackt


def search(
    phi: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    phi_and_slope: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    phi0: jax.Array,
    dphi0: jax.Array,
    old_phi0: jax.Array,
    *,
    c1: jax.Array,
    c2: jax.Array,
) -> SearchResult:
    """scipy's ``_line_search_wolfe12``: Moré-Thuente, and if it fails the zoom search.

    ``phi(t)`` is the objective along the direction, ``phi_and_slope(t)`` it and its slope,
    each with whether it ran the objective (``False``: known, not counted);
    ``old_phi0`` the objective at the previous point (NaN before the first step), from which
    both searches guess their first trial step, as scipy's do. The counts add up both; the
    zoom search reuses the first search's last trial where it starts there (scipy's objective
    keeps the last point's value and gradient, so its counts do not include it again).
    """
    guess = _first_step(phi0, dphi0, old_phi0)
    first, last = wolfe_search(phi_and_slope, phi0, dphi0, guess, c1=c1, c2=c2)

    def fallback() -> SearchResult:
        found = zoom_search(phi, phi_and_slope, phi0, dphi0, guess, last, c1=c1, c2=c2)
        second = SearchResult(*found)
        return second._replace(nfev=first.nfev + second.nfev, njev=first.njev + second.njev)

    return lax.cond(first.ok, lambda: first, fallback)


def _first_step(phi0: jax.Array, dphi0: jax.Array, old_phi0: jax.Array) -> jax.Array:
    """scipy's first trial step: 1, or less by interpolation from the last decrease."""
    guess = 1.01 * 2 * (phi0 - old_phi0) / dphi0
    guess = jnp.where(jnp.isfinite(old_phi0) & (dphi0 != 0) & (guess < 1), guess, 1.0)
    return jnp.where(guess < 0, 1.0, guess).astype(phi0.dtype)
