"""Trust-region Newton-CG, as ``scipy.optimize.minimize(method="trust-ncg")`` defines it.

Each iteration minimises the quadratic model ``g.p + p.Hp/2`` over ``|p| <= radius`` by
Steihaug-Toint conjugate gradients (Nocedal and Wright, Algorithm 7.2): stop at the boundary
on negative curvature (at the intersection with the lower model value) or when a step would
leave the region, and inside once the residual is below ``min(0.5, sqrt(|g|)) |g|``. The
step is taken if the actual decrease is more than ``eta`` times the predicted one; the
radius shrinks by 4 when that ratio is below 1/4 and doubles (up to ``max_trust_radius``)
when it is above 3/4 and the step reached the boundary. The solve stops when ``|g| < gtol``.

Compiled as two nested ``lax.while_loop``s: the outer one linearises the gradient once per
accepted point (``_minimize.hessian_matvec``); the inner one retries smaller regions with
the same linearisation until a step is accepted, so rejected steps cost no gradient.

Differences from scipy, none of which changes the iterates scipy computes: the model value of
a step comes from the CG recurrences instead of one more Hessian product (``nhev`` is lower
than scipy's by one per iteration); the inner CG stops after ``cg_maxiter`` products
(scipy's has no limit); a trial point where the objective is NaN or Inf is rejected and the
radius shrunk (scipy neither accepts nor shrinks, and loops until ``maxiter``).

Also here: :func:`trust_ncg_step`, one trust-region step for training loops.
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
from ._minimize import (
    RUNNING,
    MinimizeResult,
    MinimizeStatus,
    StepInfo,
    as_floating,
    check_callable,
    count,
    finite,
    flatten,
    hessian_matvec,
    option_count,
    option_float,
    running,
)

NAME = "trust-ncg"
TOL_OPTION = "gtol"  # what ``minimize(tol=...)`` sets, as in scipy
OPTIONS = ("maxiter", "gtol", "initial_trust_radius", "max_trust_radius", "eta", "cg_maxiter")


class Config(NamedTuple):
    """The options, checked; passed into the compiled solve as arrays (not constants)."""

    maxiter: Any = None  # default 200 n
    gtol: Any = 1e-4
    initial_trust_radius: Any = 1.0
    max_trust_radius: Any = 1000.0
    eta: Any = 0.15
    cg_maxiter: Any = None  # default 20 n


def make_config(options: dict, n: int) -> Config:
    """``options`` (scipy's names, already checked to be known) for ``n`` variables."""
    config = Config(**options)
    option_count("maxiter", config.maxiter)
    option_count("cg_maxiter", config.cg_maxiter, minimum=1)
    names = ("gtol", "initial_trust_radius", "max_trust_radius", "eta")
    gtol, initial, largest, eta = (option_float(name, getattr(config, name)) for name in names)
    problems = [
        (gtol >= 0, f"'gtol' must be non-negative, but got {gtol}"),
        (0 <= eta < 0.25, f"'eta' must satisfy 0 <= eta < 0.25, but got {eta}"),
        (largest > 0, f"'max_trust_radius' must be positive, but got {largest}"),
        (initial > 0, f"'initial_trust_radius' must be positive, but got {initial}"),
        (
            initial < largest,
            f"'initial_trust_radius' ({initial}) must be less than 'max_trust_radius' ({largest})",
        ),
    ]
    for ok, problem in problems:
        if not ok:
            msg = f"Invalid trust-ncg option: {problem}."
            raise HVPError(msg)
    return Config(
        maxiter=200 * n if config.maxiter is None else config.maxiter,
        gtol=gtol,
        initial_trust_radius=initial,
        max_trust_radius=largest,
        eta=eta,
        cg_maxiter=20 * n if config.cg_maxiter is None else config.cg_maxiter,
    )


# --- the subproblem ---------------------------------------------------------------------------


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


def _new_radius(radius, ratio, on_boundary, max_radius):
    """scipy's rule: shrink by 4 below ratio 1/4; double on the boundary above 3/4."""
    grown = jnp.where((ratio > 0.75) & on_boundary, jnp.minimum(2 * radius, max_radius), radius)
    return jnp.where(ratio < 0.25, 0.25 * radius, grown)


def _predicted_decrease(f: jax.Array, g: jax.Array, sub: Subproblem) -> jax.Array:
    """``f - model(p)``, subtracted as scipy does: a decrease lost to rounding in ``f`` is 0,
    which ends the solve (``NO_PREDICTED_DECREASE``) where scipy's ends."""
    return f - (f + (g @ sub.p + 0.5 * (sub.p @ sub.Hp)))


def _ratio(f: jax.Array, f_new: jax.Array, predicted: jax.Array) -> jax.Array:
    """Actual over predicted decrease; ``-inf`` for a non-finite trial value."""
    return jnp.where(jnp.isfinite(f_new), (f - f_new) / predicted, -jnp.inf)


# --- minimize(method="trust-ncg") -------------------------------------------------------------


class _Carry(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    radius: jax.Array
    nit: jax.Array
    nfev: jax.Array
    njev: jax.Array
    nhev: jax.Array
    status: jax.Array


class _Trial(NamedTuple):
    """The inner loop: trial steps from one point, until one is accepted."""

    x: jax.Array
    f: jax.Array
    radius: jax.Array
    nit: jax.Array
    nfev: jax.Array
    nhev: jax.Array
    accepted: jax.Array
    status: jax.Array


def solve(fun: Callable, x0: jax.Array, args: tuple, config: Config) -> MinimizeResult:
    """scipy's trust-ncg on a flat ``x0``: ``fun(x, *args)`` is a scalar."""
    maxiter, cg_maxiter = config.maxiter, config.cg_maxiter

    # The gradient at x0 comes with the first linearisation (counted here, as scipy does).
    f0 = fun(x0, *args)
    radius = jnp.asarray(config.initial_trust_radius, x0.dtype)
    one = count() + 1
    start = _Carry(x0, f0, jnp.zeros_like(x0), radius, count(), one, one, count(), running())

    def iteration(c: _Carry) -> _Carry:
        _, g, matvec = hessian_matvec(fun, c.x, args)
        status = _check_point(c.f, g, c.nit, config.gtol, maxiter)

        def trial(t: _Trial) -> _Trial:
            sub = steihaug_cg(g, matvec, t.radius, cg_maxiter)
            predicted = _predicted_decrease(c.f, g, sub)
            x_new = c.x + sub.p
            f_new = fun(x_new, *args)
            ratio = _ratio(c.f, f_new, predicted)
            accepted = ratio > config.eta
            nit = t.nit + 1
            status = jnp.where(nit >= maxiter, MinimizeStatus.MAX_ITERATIONS, running())
            status = jnp.where(accepted, RUNNING, status)
            status = jnp.where(predicted > 0, status, MinimizeStatus.NO_PREDICTED_DECREASE)
            bad = ~finite(sub.p, predicted) | sub.nonfinite
            status = jnp.where(bad, MinimizeStatus.NONFINITE, status)
            counted = (status == RUNNING) | (status == MinimizeStatus.MAX_ITERATIONS)
            return _Trial(
                x=x_new,
                f=f_new,
                radius=_new_radius(t.radius, ratio, sub.on_boundary, config.max_trust_radius),
                nit=jnp.where(counted, nit, t.nit),
                nfev=t.nfev + 1,
                nhev=t.nhev + sub.hvps,
                accepted=accepted & (status == RUNNING),
                status=status,
            )

        first = _Trial(c.x, c.f, c.radius, c.nit, c.nfev, c.nhev, jnp.asarray(False), status)
        t = lax.while_loop(lambda t: (t.status == RUNNING) & ~t.accepted, trial, first)
        return _Carry(
            x=jnp.where(t.accepted, t.x, c.x),
            f=jnp.where(t.accepted, t.f, c.f),
            g=g,
            radius=t.radius,
            nit=t.nit,
            nfev=t.nfev,
            njev=c.njev + t.accepted,  # the gradient there, linearised next
            nhev=t.nhev,
            status=t.status,
        )

    final = lax.while_loop(lambda c: c.status == RUNNING, iteration, start)
    return MinimizeResult(
        x=final.x,
        fun=final.f,
        jac=final.g,
        nit=final.nit,
        nfev=final.nfev,
        njev=final.njev,
        nhev=final.nhev,
        success=final.status == MinimizeStatus.SUCCESS,
        status=final.status,
    )


def _check_point(f, g, nit, gtol, maxiter) -> jax.Array:
    """The tests scipy makes at a new point: NaN, gradient small enough, iterations left."""
    status = jnp.where(nit >= maxiter, MinimizeStatus.MAX_ITERATIONS, running())
    status = jnp.where(jnp.linalg.norm(g) < gtol, MinimizeStatus.SUCCESS, status)
    return jnp.where(finite(f, g), status, MinimizeStatus.NONFINITE)


# --- one step for training loops --------------------------------------------------------------


class TrustNCGState(NamedTuple):
    """The state of :func:`trust_ncg_step` between steps: the trust radius."""

    radius: jax.Array


def trust_ncg_init(params: Any, radius: float = 1.0) -> TrustNCGState:
    """The initial state of :func:`trust_ncg_step` for ``params``.

    Args:
      params: the parameters (any pytree of floating arrays); fixes the state's dtype.
      radius: the initial trust radius (positive), in the 2-norm of all parameters together.

    Returns:
      A :class:`TrustNCGState`, a pytree.
    """
    x, _ = ravel_pytree(as_floating(params, "params"))
    if not (isinstance(radius, (int, float)) and radius > 0 and math.isfinite(radius)):
        msg = f"radius must be a positive number, but got {radius!r}."
        raise HVPError(msg)
    return TrustNCGState(jnp.asarray(radius, x.dtype))


def trust_ncg_step(
    fun: Callable,
    params: Any,
    state: TrustNCGState,
    *args: Any,
    max_radius: float = 1000.0,
    eta: float = 0.15,
    cg_maxiter: int = 50,
) -> tuple[Any, TrustNCGState, StepInfo]:
    """One trust-region Newton-CG step on ``fun(params, *args)``, for training loops.

    The step of ``minimize(method="trust-ncg")`` made once, on the ``args`` given (e.g. a
    mini-batch): Steihaug-Toint CG within the current radius (at most ``cg_maxiter``
    Hessian products), one evaluation of ``fun`` at the trial point, then scipy's acceptance
    (``ratio > eta``) and radius rules. A pure function: use it inside your own
    ``jax.jit``. Costs one linearisation of the gradient, the products, and one evaluation.

    Args:
      fun: the objective, ``fun(params, *args)`` -> one floating value.
      params: any pytree of floating arrays.
      state: from :func:`trust_ncg_init` or the previous step.
      *args: the rest of ``fun``'s arguments (a mini-batch).
      max_radius: the largest radius.
      eta: the least ratio of actual to predicted decrease for a step to be taken.
      cg_maxiter: the most CG iterations (Hessian products) per step.

    Returns:
      ``(params, state, info)``: the new parameters (the old ones if the step was rejected),
      the new state, and a :class:`StepInfo`.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> def loss(params, x, y):
      ...     logits = x @ params["w"] + params["b"]
      ...     penalty = 1e-2 * params["w"] @ params["w"]
      ...     return jnp.mean(jnp.logaddexp(0.0, logits) - y * logits) + penalty
      >>> x = jnp.array([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.3], [2.0, 1.0]])
      >>> y = jnp.array([1.0, 0.0, 0.0, 1.0])
      >>> params = {"w": jnp.zeros(2), "b": jnp.zeros(())}
      >>> state = jaxhvp.trust_ncg_init(params, radius=1.0)
      >>> step = jax.jit(lambda p, s, x, y: jaxhvp.trust_ncg_step(loss, p, s, x, y))
      >>> for _ in range(10):
      ...     params, state, info = step(params, state, x, y)
      >>> grad = jax.grad(loss)(params, x, y)
      >>> bool(jnp.linalg.norm(grad["w"]) < 1e-4)
      True
    """
    check_callable(fun)
    x, unravel, flat_fun = flatten(fun, as_floating(params, "params"))
    f, g, matvec = hessian_matvec(flat_fun, x, args)
    sub = steihaug_cg(g, matvec, state.radius, cg_maxiter)
    predicted = _predicted_decrease(f, g, sub)
    f_new = flat_fun(x + sub.p, *args)
    usable = finite(sub.p, predicted) & ~sub.nonfinite & (predicted > 0)
    ratio = jnp.where(usable, _ratio(f, f_new, predicted), -jnp.inf)
    accepted = ratio > eta
    radius = _new_radius(state.radius, ratio, sub.on_boundary, max_radius)
    new_x = jnp.where(accepted, x + sub.p, x)
    info = StepInfo(fun=f, ratio=ratio, accepted=accepted, nhev=sub.hvps)
    return unravel(new_x), TrustNCGState(radius), info
