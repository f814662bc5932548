"""The one loop every solver of :func:`jaxhvp.minimize` runs in, and the solver protocol.

A solver is an object with four attributes and four methods:

* ``NAME`` (the ``method`` string), ``TOL_OPTION`` (the option ``tol=`` sets), ``OPTIONS``
  (scipy's option names it accepts);
* ``configure(options, n)``: the checked options for ``n`` variables, a NamedTuple whose
  fields become arrays of the compiled solve (a new value is not a recompile);
* ``init(problem, config)``: ``(state, counts, status)`` before the first iteration;
* ``step(problem, state, counts, config, iteration)``: ``(state, counts, status)`` after one
  outer iteration; it ends every iteration scipy would count (a trust-region solver counts
  every trial step) with ``iteration.end``, which numbers it and calls the user's callback
  (its status tests, ``iteration.over_limit`` among them, are the solver's, in scipy's
  order);
* ``result(problem, state)``: ``(x, fun, jac)`` as flat vectors.

:func:`iterate` owns the ``lax.while_loop``, the status, the counters and the result;
``minimize`` (in ``_minimize``) owns the options, ``throw`` and the eager call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import io_callback

from .._errors import HVPError
from ._problem import Problem, count
from ._result import RUNNING, MinimizeResult, MinimizeStatus


class Counts(NamedTuple):
    """scipy's counters: iterations, objective, gradient and Hessian-product evaluations."""

    nit: jax.Array
    nfev: jax.Array
    njev: jax.Array
    nhev: jax.Array

    @classmethod
    def start(cls, nfev: int = 0, njev: int = 0) -> Counts:
        return cls(count(), count() + nfev, count() + njev, count())


class Solver(Protocol):
    """What :func:`iterate` needs from a solver (see the module docstring)."""

    NAME: str
    TOL_OPTION: str
    OPTIONS: tuple[str, ...]

    def configure(self, options: dict, n: int) -> NamedTuple: ...
    def init(self, problem: Problem, config: Any) -> tuple[Any, Counts, jax.Array]: ...
    def step(
        self, problem: Problem, state: Any, counts: Counts, config: Any, iteration: Iteration
    ) -> tuple[Any, Counts, jax.Array]: ...
    def result(self, problem: Problem, state: Any) -> tuple[jax.Array, jax.Array, jax.Array]: ...


class Iteration:
    """The end of an iteration, as scipy's loops end one: count it, then call the callback
    (``StopIteration`` there stops the run). Solvers build their status from their own tests
    and :meth:`over_limit` in the order scipy makes them."""

    def __init__(
        self, problem: Problem, maxiter: jax.Array, hook: Callable | None, token: jax.Array
    ):
        self.problem, self.maxiter, self.hook, self.token = problem, maxiter, hook, token

    def over_limit(self, nit: jax.Array) -> jax.Array:
        """Whether ``nit`` iterations use up ``maxiter``."""
        return nit >= self.maxiter

    def end(
        self, counts: Counts, x: jax.Array, f: jax.Array, status: jax.Array, counted: Any = True
    ) -> tuple[Counts, jax.Array]:
        """``(counts, status)`` after an iteration that reached ``x`` (objective ``f``) with
        ``status``; ``counted`` False is a step scipy does not count (no number, no callback).
        """
        counts = counts._replace(nit=counts.nit + counted)
        if self.hook is not None:
            stop = lax.cond(
                counted, lambda: self._call_back(x, f, counts.nit), lambda: jnp.asarray(False)
            )
            status = jnp.where(stop, MinimizeStatus.CALLBACK_STOPPED, status)
        return counts, status.astype(jnp.int32)

    def _call_back(self, x: jax.Array, f: jax.Array, nit: jax.Array) -> jax.Array:
        shape = jax.ShapeDtypeStruct((), jnp.bool_)
        x = self.problem.unravel(x)
        return io_callback(self.hook, shape, self.token, x, f, nit, ordered=False)


def iterate(
    solver: Solver, problem: Problem, config: Any, hook: Callable | None, token: jax.Array
) -> MinimizeResult:
    """Runs ``solver`` on ``problem`` to the end: one ``lax.while_loop`` over its steps.

    ``hook(token, x, fun, nit)`` is the host callback (None: none); it returns whether to stop.
    """
    iteration = Iteration(problem, config.maxiter, hook, token)
    state, counts, status = solver.init(problem, config)

    def step(carry: tuple) -> tuple:
        return solver.step(problem, *carry[:2], config, iteration)

    try:
        state, counts, status = lax.while_loop(
            lambda carry: carry[2] == RUNNING, step, (state, counts, status)
        )
    except Exception as error:
        if hook is None or not any(w in str(error) for w in ("batched predicate", "vmap")):
            raise
        msg = (
            "minimize(callback=...) cannot run under jax.vmap: JAX does not allow host "
            "callbacks in a loop whose end differs across the batch. Call minimize without "
            "callback under vmap, or loop over the problems in Python."
        )
        raise HVPError(msg) from None
    x, fun, jac = solver.result(problem, state)
    return MinimizeResult(
        x=problem.tree(x),
        fun=fun,
        jac=problem.tree(jac),
        nit=counts.nit,
        nfev=counts.nfev,
        njev=counts.njev,
        nhev=counts.nhev,
        success=status == MinimizeStatus.SUCCESS,
        status=status,
    )
