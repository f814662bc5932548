"""Line-search Newton-CG, as ``scipy.optimize.minimize(method="Newton-CG")`` defines it.

Each outer step solves ``H p = -g`` approximately by conjugate gradients started from 0, with
scipy's rules: residuals measured in the 1-norm, the forcing term ``min(0.5, sqrt(|g|_1))``,
a stop on (near-)zero curvature and on negative curvature (falling back to a scaled
steepest-descent step when it shows up at once), and at most ``20 n`` iterations. Then a
Wolfe line search (``_line_search``, scipy's ``line_search_wolfe1``) along ``p``, starting
from scipy's step guess. The solve stops when the 1-norm of the step is at most
``n * xtol``. Inside one ``lax.while_loop``; Hessian products through
``_minimize.hessian_matvec``, one linearisation per outer step.

Also here: :func:`newton_cg_step`, one damped (Levenberg-Marquardt) Newton-CG step for
training loops, in the style of Martens' Hessian-free optimisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from ._errors import HVPError
from ._line_search import wolfe_search
from ._minimize import (
    RUNNING,
    MinimizeResult,
    MinimizeStatus,
    StepInfo,
    as_floating,
    check_callable,
    count,
    directional,
    finite,
    flatten,
    hessian_matvec,
    option_count,
    option_float,
    running,
)

NAME = "newton-cg"
TOL_OPTION = "xtol"  # what ``minimize(tol=...)`` sets, as in scipy
OPTIONS = ("maxiter", "xtol", "c1", "c2", "cg_maxiter")


class Config(NamedTuple):
    """The options, checked; passed into the compiled solve as arrays (not constants)."""

    maxiter: Any = None  # default 200 n
    xtol: Any = 1e-5
    c1: Any = 1e-4
    c2: Any = 0.9
    cg_maxiter: Any = None  # default 20 n


def make_config(options: dict, n: int) -> Config:
    """``options`` (scipy's names, already checked to be known) for ``n`` variables."""
    config = Config(**options)
    option_count("maxiter", config.maxiter)
    option_count("cg_maxiter", config.cg_maxiter, minimum=1)
    xtol, c1, c2 = (option_float(name, getattr(config, name)) for name in ("xtol", "c1", "c2"))
    if not xtol > 0:
        msg = f"options['xtol'] must be positive, but got {xtol}."
        raise HVPError(msg)
    if not 0 < c1 < c2 < 1:
        msg = f"options 'c1' and 'c2' must satisfy 0 < c1 < c2 < 1, but got c1={c1}, c2={c2}."
        raise HVPError(msg)
    return Config(
        maxiter=200 * n if config.maxiter is None else config.maxiter,
        xtol=xtol,
        c1=c1,
        c2=c2,
        cg_maxiter=20 * n if config.cg_maxiter is None else config.cg_maxiter,
    )


# --- the inner solve --------------------------------------------------------------------------


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


# --- minimize(method="newton-cg") -------------------------------------------------------------


class _Carry(NamedTuple):
    x: jax.Array
    f: jax.Array
    f_old: jax.Array  # f at the previous point, for the line search's first step
    nit: jax.Array
    nfev: jax.Array
    njev: jax.Array
    nhev: jax.Array
    status: jax.Array


def solve(fun: Callable, x0: jax.Array, args: tuple, config: Config) -> MinimizeResult:
    """scipy's Newton-CG on a flat ``x0``: ``fun(x, *args)`` is a scalar."""
    maxiter, cg_maxiter = config.maxiter, config.cg_maxiter
    xtol = x0.size * config.xtol  # scipy's stopping rule is on the step's 1-norm, not its mean

    # The gradient at x0 comes with the first linearisation (counted here, as scipy does).
    f0 = fun(x0, *args)
    status = jnp.where(finite(f0), running(), MinimizeStatus.NONFINITE)
    status = jnp.where((status == RUNNING) & (maxiter <= 0), MinimizeStatus.MAX_ITERATIONS, status)
    one = count() + 1
    start = _Carry(x0, f0, jnp.full_like(f0, jnp.nan), count(), one, one, count(), status)

    def step(c: _Carry) -> _Carry:
        _, g, matvec = hessian_matvec(fun, c.x, args)
        cg = truncated_cg(g, matvec, cg_maxiter)
        p = cg.p
        slope = g @ p
        # scipy's first trial step: 1, or an interpolation from the last decrease.
        guess = 1.01 * 2 * (c.f - c.f_old) / slope
        guess = jnp.where((c.nit > 0) & (slope != 0) & (guess < 1), guess, 1.0)
        guess = jnp.where(guess < 0, 1.0, guess)
        search = wolfe_search(
            lambda t: directional(fun, c.x + t * p, p, args),
            c.f,
            slope,
            guess,
            c1=config.c1,
            c2=config.c2,
        )
        # A zero direction (zero gradient, or zero curvature at once) is a zero step.
        zero = jnp.all(p == 0)
        ok = zero | search.ok
        update = jnp.where(zero, 0.0, search.step) * p
        f_new = jnp.where(zero, c.f, search.value)
        step_norm = jnp.sum(jnp.abs(update))

        failure = jnp.where(
            search.nonfinite, MinimizeStatus.NONFINITE, MinimizeStatus.LINE_SEARCH_FAILED
        )
        status = jnp.where(ok, running(), failure)
        status = jnp.where(cg.exhausted, MinimizeStatus.CG_NOT_CONVERGED, status)
        status = jnp.where(finite(g, p) & ~cg.nonfinite, status, MinimizeStatus.NONFINITE)
        moved = status == RUNNING
        nit = c.nit + moved
        converged = moved & (step_norm <= xtol)
        status = jnp.where(converged & finite(f_new, step_norm), MinimizeStatus.SUCCESS, status)
        status = jnp.where(converged & ~finite(f_new, step_norm), MinimizeStatus.NONFINITE, status)
        status = jnp.where(
            moved & ~converged & (nit >= maxiter), MinimizeStatus.MAX_ITERATIONS, status
        )
        return _Carry(
            x=jnp.where(moved, c.x + update, c.x),
            f=jnp.where(moved, f_new, c.f),
            f_old=jnp.where(moved, c.f, c.f_old),
            nit=nit,
            nfev=c.nfev + search.evaluations,
            njev=c.njev + search.evaluations,
            nhev=c.nhev + cg.hvps,
            status=status,
        )

    final = lax.while_loop(lambda c: c.status == RUNNING, step, start)
    jac = jax.grad(fun)(final.x, *args)  # for the result; scipy returns the previous point's
    return MinimizeResult(
        x=final.x,
        fun=final.f,
        jac=jac,
        nit=final.nit,
        nfev=final.nfev,
        njev=final.njev,
        nhev=final.nhev,
        success=final.status == MinimizeStatus.SUCCESS,
        status=final.status,
    )


# --- one step for training loops --------------------------------------------------------------


class NewtonCGState(NamedTuple):
    """The state of :func:`newton_cg_step` between steps: the damping ``lambda``."""

    damping: jax.Array


def newton_cg_init(params: Any, damping: float = 1.0) -> NewtonCGState:
    """The initial state of :func:`newton_cg_step` for ``params``.

    Args:
      params: the parameters (any pytree of floating arrays); fixes the state's dtype.
      damping: the initial Levenberg-Marquardt damping ``lambda`` (positive).

    Returns:
      A :class:`NewtonCGState`, a pytree.
    """
    x, _ = ravel_pytree(as_floating(params, "params"))
    if not (isinstance(damping, (int, float)) and damping > 0 and math.isfinite(damping)):
        msg = f"damping must be a positive number, but got {damping!r}."
        raise HVPError(msg)
    return NewtonCGState(jnp.asarray(damping, x.dtype))


def newton_cg_step(
    fun: Callable,
    params: Any,
    state: NewtonCGState,
    *args: Any,
    cg_maxiter: int = 50,
) -> tuple[Any, NewtonCGState, StepInfo]:
    """One damped Newton-CG step on ``fun(params, *args)``: Hessian-free optimisation.

    Solves ``(H + lambda I) p = -g`` by scipy's truncated CG (at most ``cg_maxiter``
    Hessian products), evaluates ``fun`` at ``params + p`` on the same ``args`` (e.g. the
    same mini-batch), and compares the decrease with the undamped quadratic model's
    prediction, ``ratio = (f - f(params + p)) / -(g.p + p.Hp/2)`` (one more product). The
    step is taken if the objective decreased (``ratio > 0``); the damping is multiplied by
    3/2 if ``ratio < 1/4`` and by 2/3 if ``ratio > 3/4`` (Martens, 2010). A pure function: use it
    inside your own ``jax.jit``. Costs one linearisation of the gradient, up to
    ``cg_maxiter + 1`` Hessian products, and one evaluation of ``fun``.

    Args:
      fun: the objective, ``fun(params, *args)`` -> one floating value.
      params: any pytree of floating arrays.
      state: from :func:`newton_cg_init` or the previous step.
      *args: the rest of ``fun``'s arguments (a mini-batch).
      cg_maxiter: the most CG iterations (Hessian products) per step.

    Returns:
      ``(params, state, info)``: the new parameters (the old ones if the step was rejected),
      the new state, and a :class:`StepInfo`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> def loss(params, x, y):
      ...     return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)
      >>> params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
      >>> x = jnp.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [2.0, 1.0, 1.0]])
      >>> y = x @ jnp.array([1.0, -1.0, 2.0]) + 0.5
      >>> state = jaxhvp.newton_cg_init(params, damping=1e-3)
      >>> @jax.jit
      ... def train_step(params, state, x, y):
      ...     return jaxhvp.newton_cg_step(loss, params, state, x, y)
      >>> for _ in range(5):
      ...     params, state, info = train_step(params, state, x, y)
      >>> bool(info.accepted), bool(loss(params, x, y) < 1e-4)
      (True, True)
    """
    check_callable(fun)
    x, unravel, flat_fun = flatten(fun, as_floating(params, "params"))
    damping = state.damping
    f, g, matvec = hessian_matvec(flat_fun, x, args)
    cg = truncated_cg(g, lambda v: matvec(v) + damping * v, cg_maxiter)
    Hp = matvec(cg.p)
    predicted = -(g @ cg.p + 0.5 * cg.p @ Hp)
    f_new = flat_fun(x + cg.p, *args)
    usable = finite(f_new, cg.p) & ~cg.nonfinite & (predicted > 0)
    ratio = jnp.where(usable, (f - f_new) / predicted, -jnp.inf)
    accepted = ratio > 0
    damping = jnp.where(
        ratio < 0.25, damping * 1.5, jnp.where(ratio > 0.75, damping / 1.5, damping)
    )
    new_x = jnp.where(accepted, x + cg.p, x)
    info = StepInfo(fun=f, ratio=ratio, accepted=accepted, nhev=cg.hvps + 1)
    return unravel(new_x), NewtonCGState(damping), info
