"""Trust-region Newton-CG, as ``scipy.optimize.minimize(method="trust-ncg")`` defines it.

Each iteration minimises the quadratic model ``g.p + p.Hp/2`` over ``|p| <= radius`` by
Steihaug-Toint conjugate gradients (Nocedal and Wright, Algorithm 7.2): stop at the boundary
on negative curvature (at the intersection with the lower model value) or when a step would
leave the region, and inside once the residual is below ``min(0.5, sqrt(|g|)) |g|``. The
step is taken if the actual decrease is more than ``eta`` times the predicted one; the
radius shrinks by 4 when that ratio is below 1/4 and doubles (up to ``max_trust_radius``)
when it is above 3/4 and the step reached the boundary. The solve stops when ``|g| < gtol``.

Each outer step of the shared loop linearises the gradient once at an accepted point
(``Problem.linearize``); an inner ``lax.while_loop`` retries smaller regions with the same
linearisation until a step is accepted, so rejected steps cost no gradient. Every trial is an
iteration, as in scipy (numbered, called back, limited by ``maxiter``).

Differences from scipy, none of which changes the iterates scipy computes: the model value of
a step comes from the CG recurrences instead of one more Hessian product (``nhev`` is lower
than scipy's by one per iteration); the inner CG stops after ``cg_maxiter`` products
(scipy's has no limit); a trial point where the objective is NaN or Inf is rejected and the
radius shrunk (scipy neither accepts nor shrinks, and loops until ``maxiter``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._errors import HVPError
from ._krylov import Subproblem, steihaug_cg
from ._loop import Counts, Iteration
from ._problem import Problem, finite, option_count, option_float
from ._result import RUNNING, MinimizeStatus, running


class Config(NamedTuple):
    """The options, checked; passed into the compiled solve as arrays (not constants)."""

    maxiter: Any = None  # default 200 n
    gtol: Any = 1e-4
    initial_trust_radius: Any = 1.0
    max_trust_radius: Any = 1000.0
    eta: Any = 0.15
    cg_maxiter: Any = None  # default 20 n


class State(NamedTuple):
    x: jax.Array
    f: jax.Array  # NaN until the first linearisation gives it
    g: jax.Array  # the gradient at x, if fresh
    fresh: jax.Array  # whether g is the gradient at x (not yet after an accepted step)
    radius: jax.Array
    first: jax.Array


class _Trial(NamedTuple):
    """The inner loop: trial steps from one point, until one is accepted."""

    x: jax.Array
    f: jax.Array
    radius: jax.Array
    counts: Counts
    accepted: jax.Array
    status: jax.Array


class TrustNCG:
    """The trust-ncg solver of :func:`jaxhvp.minimize` (see ``_loop`` for the protocol)."""

    NAME = "trust-ncg"
    TOL_OPTION = "gtol"  # what ``minimize(tol=...)`` sets, as in scipy
    OPTIONS = ("maxiter", "gtol", "initial_trust_radius", "max_trust_radius", "eta", "cg_maxiter")

    def configure(self, options: dict, n: int) -> Config:
        """``options`` (scipy's names, already checked to be known) for ``n`` variables."""
        config = Config(**options)
        maxiter = option_count("maxiter", config.maxiter)
        cg_maxiter = option_count("cg_maxiter", config.cg_maxiter, minimum=1)
        names = ("gtol", "initial_trust_radius", "max_trust_radius", "eta")
        gtol, initial, largest, eta = (option_float(name, getattr(config, name)) for name in names)
        problems = [
            (gtol >= 0, f"'gtol' must be non-negative, but got {gtol}"),
            (0 <= eta < 0.25, f"'eta' must satisfy 0 <= eta < 0.25, but got {eta}"),
            (largest > 0, f"'max_trust_radius' must be positive, but got {largest}"),
            (initial > 0, f"'initial_trust_radius' must be positive, but got {initial}"),
            (
                initial < largest,
                f"'initial_trust_radius' ({initial}) must be less than 'max_trust_radius' "
                f"({largest})",
            ),
        ]
        for ok, problem in problems:
            if not ok:
                msg = f"Invalid trust-ncg option: {problem}."
                raise HVPError(msg)
        return Config(
            maxiter=200 * n if maxiter is None else maxiter,
            gtol=gtol,
            initial_trust_radius=initial,
            max_trust_radius=largest,
            eta=eta,
            cg_maxiter=20 * n if cg_maxiter is None else cg_maxiter,
        )

    def init(self, problem: Problem, config: Config) -> tuple[State, Counts, jax.Array]:
        # f(x0) and the gradient there come with the first linearisation (counted here, as
        # scipy counts them).
        x0 = problem.x0
        nan = jnp.full((), jnp.nan, problem.dtype)
        radius = jnp.asarray(config.initial_trust_radius, problem.dtype)
        no = jnp.asarray(False)
        state = State(x0, nan, jnp.zeros_like(x0), no, radius, jnp.asarray(True))
        return state, Counts.start(1, 1), running()

    def step(
        self, problem: Problem, s: State, counts: Counts, config: Config, iteration: Iteration
    ) -> tuple[State, Counts, jax.Array]:
        f_here, g, matvec = problem.linearize(s.x)
        f = jnp.where(s.first, f_here, s.f)
        # The tests scipy makes at a new point: NaN, the gradient, then the iterations left
        # (not before the first iteration: scipy makes one even with maxiter <= 0).
        status = jnp.where(
            (counts.nit > 0) & iteration.over_limit(counts.nit),
            MinimizeStatus.MAX_ITERATIONS,
            running(),
        )
        status = jnp.where(jnp.linalg.norm(g) < config.gtol, MinimizeStatus.SUCCESS, status)
        status = jnp.where(finite(f, g), status, MinimizeStatus.NONFINITE)

        def trial(t: _Trial) -> _Trial:
            sub = steihaug_cg(g, matvec, t.radius, config.cg_maxiter)
            predicted = predicted_decrease(f, g, sub)
            x_new = s.x + sub.p
            # A trial at the last point evaluated (the step rounds to 0, or a rejected step
            # is tried again inside a smaller region) is not run: scipy's objective keeps the
            # last point's value, so does not count it either.
            again = jnp.all(x_new == t.x)
            f_new = lax.cond(again, lambda: t.f, lambda: problem.value(x_new))
            ratio = decrease_ratio(f, f_new, predicted)
            accepted = ratio > config.eta
            # scipy's order: the limit (tested at the next point after an accepted step, with
            # its gradient), no predicted decrease, then NaN (jaxhvp's).
            status = jnp.where(
                iteration.over_limit(t.counts.nit + 1), MinimizeStatus.MAX_ITERATIONS, running()
            )
            status = jnp.where(accepted, RUNNING, status)
            status = jnp.where(predicted > 0, status, MinimizeStatus.NO_PREDICTED_DECREASE)
            bad = ~finite(sub.p, predicted) | sub.nonfinite
            status = jnp.where(bad, MinimizeStatus.NONFINITE, status)
            counted = (status == RUNNING) | (status == MinimizeStatus.MAX_ITERATIONS)
            counts, status = iteration.end(
                t.counts,
                jnp.where(accepted, x_new, s.x),
                jnp.where(accepted, f_new, f),
                status,
                counted,
            )
            counts = counts._replace(nfev=counts.nfev + ~again, nhev=counts.nhev + sub.hvps)
            return _Trial(
                x=x_new,
                f=f_new,
                radius=new_radius(t.radius, ratio, sub.on_boundary, config.max_trust_radius),
                counts=counts,
                accepted=accepted & counted,  # taken, even if the callback then stops the run
                status=status,
            )

        first = _Trial(s.x, f, s.radius, counts, jnp.asarray(False), status)
        t = lax.while_loop(lambda t: (t.status == RUNNING) & ~t.accepted, trial, first)
        state = State(
            x=jnp.where(t.accepted, t.x, s.x),
            f=jnp.where(t.accepted, t.f, f),
            g=g,
            fresh=~t.accepted,
            radius=t.radius,
            first=jnp.asarray(False),
        )
        # The gradient at an accepted point: computed by the next linearisation.
        counts = t.counts._replace(njev=t.counts.njev + t.accepted)
        return state, counts, t.status

    def result(self, problem: Problem, s: State) -> tuple[jax.Array, jax.Array, jax.Array]:
        jac = lax.cond(s.fresh, lambda: s.g, lambda: problem.gradient(s.x))
        return s.x, s.f, jac


TRUST_NCG = TrustNCG()


def new_radius(radius, ratio, on_boundary, max_radius):
    """scipy's rule: shrink by 4 below ratio 1/4; double on the boundary above 3/4."""
    grown = jnp.where((ratio > 0.75) & on_boundary, jnp.minimum(2 * radius, max_radius), radius)
    return jnp.where(ratio < 0.25, 0.25 * radius, grown)


def predicted_decrease(f: jax.Array, g: jax.Array, sub: Subproblem) -> jax.Array:
    """``f - model(p)``, subtracted as scipy does: a decrease lost to rounding in ``f`` is 0,
    which ends the solve (``NO_PREDICTED_DECREASE``) where scipy's ends."""
    return f - (f + (g @ sub.p + 0.5 * (sub.p @ sub.Hp)))


def decrease_ratio(f: jax.Array, f_new: jax.Array, predicted: jax.Array) -> jax.Array:
    """Actual over predicted decrease; ``-inf`` for a non-finite trial value."""
    return jnp.where(jnp.isfinite(f_new), (f - f_new) / predicted, -jnp.inf)
