"""Line-search Newton-CG, as ``scipy.optimize.minimize(method="Newton-CG")`` defines it.

Each iteration solves ``H p = -g`` approximately by scipy's truncated conjugate gradients
(``_krylov.truncated_cg``), then searches along ``p`` with scipy's two Wolfe line searches
(``_line_search.search``: Moré-Thuente, and the zoom search if that fails), starting from
scipy's step guess. The solve stops when the 1-norm of the step is at most ``n * xtol``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._errors import HVPError
from ._krylov import truncated_cg
from ._line_search import search
from ._loop import Counts, Iteration
from ._problem import Problem, finite, option_count, option_float
from ._result import RUNNING, MinimizeStatus, running


class Config(NamedTuple):
    """The options, checked; passed into the compiled solve as arrays (not constants)."""

    maxiter: Any = None  # default 200 n
    xtol: Any = 1e-5
    c1: Any = 1e-4
    c2: Any = 0.9
    cg_maxiter: Any = None  # default 20 n


class State(NamedTuple):
    x: jax.Array
    f: jax.Array  # NaN until the first linearisation gives it
    f_old: jax.Array  # f at the previous point, for the line search's first step
    first: jax.Array
    owed: jax.Array  # the gradient at x was not known to scipy's search: counted when used


class NewtonCG:
    """The Newton-CG solver of :func:`jaxhvp.minimize` (see ``_loop`` for the protocol)."""

    NAME = "newton-cg"
    TOL_OPTION = "xtol"  # what ``minimize(tol=...)`` sets, as in scipy
    OPTIONS = ("maxiter", "xtol", "c1", "c2", "cg_maxiter")

    def configure(self, options: dict, n: int) -> Config:
        """``options`` (scipy's names, already checked to be known) for ``n`` variables."""
        config = Config(**options)
        maxiter = option_count("maxiter", config.maxiter)
        cg_maxiter = option_count("cg_maxiter", config.cg_maxiter, minimum=1)
        xtol, c1, c2 = (option_float(name, getattr(config, name)) for name in ("xtol", "c1", "c2"))
        if not xtol >= 0:
            msg = (
                f"options['xtol'] must be non-negative, but got {xtol}; 0 runs until the step "
                "is exactly zero (or maxiter)."
            )
            raise HVPError(msg)
        if not 0 < c1 < c2 < 1:
            msg = f"options 'c1' and 'c2' must satisfy 0 < c1 < c2 < 1, but got c1={c1}, c2={c2}."
            raise HVPError(msg)
        return Config(
            maxiter=200 * n if maxiter is None else maxiter,
            xtol=xtol,
            c1=c1,
            c2=c2,
            cg_maxiter=20 * n if cg_maxiter is None else cg_maxiter,
        )

    def init(self, problem: Problem, config: Config) -> tuple[State, Counts, jax.Array]:
        # f(x0) and the gradient there come with the first linearisation; counted here, as
        # scipy counts them. Only a run that stops before it evaluates f(x0) on its own.
        x0 = problem.x0
        # scipy's loop runs while the last step's 1-norm (at first the largest float) exceeds
        # n * xtol, and tests maxiter inside it.
        converged = x0.size * config.xtol >= jnp.finfo(problem.dtype).max
        no_iterations = config.maxiter <= 0
        nan = jnp.full((), jnp.nan, problem.dtype)
        f0 = lax.cond(converged | no_iterations, lambda: problem.value(x0), lambda: nan)
        status = jnp.where(no_iterations, MinimizeStatus.MAX_ITERATIONS, running())
        status = jnp.where(converged, MinimizeStatus.SUCCESS, status)
        status = jnp.where(converged & ~jnp.isfinite(f0), MinimizeStatus.NONFINITE, status)
        no = jnp.asarray(False)
        return State(x0, f0, nan, jnp.asarray(True), no), Counts.start(1, 1), status

    def step(
        self, problem: Problem, s: State, counts: Counts, config: Config, iteration: Iteration
    ) -> tuple[State, Counts, jax.Array]:
        f_here, g, matvec = problem.linearize(s.x)
        f = jnp.where(s.first, f_here, s.f)
        cg = truncated_cg(g, matvec, config.cg_maxiter)
        p = cg.p
        slope = g @ p

        def along(evaluate: Callable, known: tuple) -> Callable:
            """``t -> (*evaluate(x + t p), ran)``. A trial that rounds to x itself is not run:
            scipy's objective keeps the last point's values (so does not count it): ``known``."""

            def at(t: jax.Array) -> tuple[jax.Array, ...]:
                y = s.x + t * p
                here = jnp.all(y == s.x)
                return (*lax.cond(here, lambda: known, lambda: evaluate(y)), ~here)

            return at

        phi = along(lambda y: (problem.value(y),), (f,))
        phi_and_slope = along(lambda y: problem.directional(y, p), (f, slope))

        found = search(
            phi,
            phi_and_slope,
            f,
            slope,
            s.f_old,
            c1=config.c1,
            c2=config.c2,
        )
        # A zero direction (zero gradient, or zero curvature at once) is a zero step (scipy's
        # zoom search accepts it; it is not left to rounding here).
        zero = jnp.all(p == 0)
        update = jnp.where(zero, 0.0, found.step) * p
        f_new = jnp.where(zero, f, found.value)
        step_norm = jnp.sum(jnp.abs(update))

        failure = jnp.where(
            found.nonfinite, MinimizeStatus.NONFINITE, MinimizeStatus.LINE_SEARCH_FAILED
        )
        status = jnp.where(zero | found.ok, running(), failure)
        status = jnp.where(cg.exhausted, MinimizeStatus.CG_NOT_CONVERGED, status)
        status = jnp.where(finite(f, g, p) & ~cg.nonfinite, status, MinimizeStatus.NONFINITE)
        moved = status == RUNNING
        x_new = s.x + update
        converged = step_norm <= problem.x0.size * config.xtol  # scipy's rule: the 1-norm
        # After a step, as scipy tests it: NaN, convergence, then the iteration limit.
        after = jnp.where(
            iteration.over_limit(counts.nit + 1), MinimizeStatus.MAX_ITERATIONS, running()
        )
        after = jnp.where(converged, MinimizeStatus.SUCCESS, after)
        after = jnp.where(finite(f_new, step_norm), after, MinimizeStatus.NONFINITE)
        ended, status = iteration.end(counts, x_new, f_new, jnp.where(moved, after, status), moved)
        counts = ended._replace(
            nfev=counts.nfev + found.nfev,
            njev=counts.njev + found.njev + s.owed,
            nhev=counts.nhev + cg.hvps,
        )
        state = State(
            x=jnp.where(moved, x_new, s.x),
            f=jnp.where(moved, f_new, f),
            f_old=jnp.where(moved, f, s.f_old),
            first=jnp.asarray(False),
            owed=moved & ~zero & found.slope_unknown,
        )
        return state, counts, status

    def result(self, problem: Problem, s: State) -> tuple[jax.Array, jax.Array, jax.Array]:
        # The gradient at x was computed by the last line search (scipy counts it there) as
        # a directional derivative only: the full one is computed here.
        return s.x, s.f, problem.gradient(s.x)


NEWTON_CG = NewtonCG()
