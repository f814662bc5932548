"""One curvature step at a time, for training loops: :func:`newton_cg_step` (damped
Newton-CG, Martens' Hessian-free optimisation) and :func:`trust_ncg_step`.

Both keep learning: a step whose quadratic model predicts no decrease (the parameters are
stationary on this data, up to rounding in the objective) counts as converged and leaves the
parameters and the state as they were; the damping and the radius stay within bounds, so
that new data can always move the parameters again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import HVPError
from .._sharding import replicated_like
from ._krylov import steihaug_cg, truncated_cg
from ._problem import Problem, as_floating, check_callable, finite
from ._result import StepInfo
from ._trust_ncg import decrease_ratio, new_radius, predicted_decrease


class NewtonCGState(NamedTuple):
    """The state of :func:`newton_cg_step` between steps: the damping ``lambda``."""

    damping: jax.Array


class TrustNCGState(NamedTuple):
    """The state of :func:`trust_ncg_step` between steps: the trust radius."""

    radius: jax.Array


def _number(name: str, value: Any) -> float:
    """A setting as a Python float: a number, or a concrete scalar array."""
    if isinstance(value, jax.core.Tracer):
        msg = (
            f"{name} must be a number fixed when the step is traced, but got a traced value; "
            "pass it as a Python number (close over it, or mark it static in jax.jit)."
        )
        raise TypeError(msg)
    try:
        return float(value)
    except (TypeError, ValueError):
        msg = f"{name} must be a number, but got {value!r}."
        raise TypeError(msg) from None


def _positive(name: str, value: Any) -> float:
    number = _number(name, value)
    if not (number > 0 and math.isfinite(number)):
        msg = f"{name} must be a positive number, but got {value!r}."
        raise HVPError(msg)
    return number


def _bounds(low_name: str, low: Any, high_name: str, high: Any) -> tuple[float, float]:
    low, high = _positive(low_name, low), _positive(high_name, high)
    if not low < high:
        msg = f"{low_name} ({low}) must be less than {high_name} ({high})."
        raise HVPError(msg)
    return low, high


def _iterations(cg_maxiter: Any) -> int:
    if isinstance(cg_maxiter, bool) or not isinstance(cg_maxiter, (int, np.integer)):
        msg = f"cg_maxiter must be an int, but got {cg_maxiter!r}."
        raise TypeError(msg)
    if cg_maxiter < 1:
        msg = (
            f"cg_maxiter must be at least 1, but got {cg_maxiter}: without a Hessian product "
            "no step can be computed."
        )
        raise HVPError(msg)
    return int(cg_maxiter)


def _state(state: Any, kind: type, init: str) -> None:
    if not isinstance(state, kind):
        msg = (
            f"state must be a {kind.__name__} (from jaxhvp.{init}), but got {type(state).__name__}."
        )
        raise TypeError(msg)


def newton_cg_init(params: Any, damping: float = 1.0) -> NewtonCGState:
    """The initial state of :func:`newton_cg_step` for ``params``.

    Args:
      params: the parameters (any pytree of floating arrays); fixes the state's dtype.
      damping: the initial Levenberg-Marquardt damping ``lambda`` (positive).

    Returns:
      A :class:`NewtonCGState`, a pytree.
    """
    return NewtonCGState(_setting(params, _positive("damping", damping)))


def trust_ncg_init(params: Any, radius: float = 1.0) -> TrustNCGState:
    """The initial state of :func:`trust_ncg_step` for ``params``.

    Args:
      params: the parameters (any pytree of floating arrays); fixes the state's dtype.
      radius: the initial trust radius (positive), in the 2-norm of all parameters together.

    Returns:
      A :class:`TrustNCGState`, a pytree.
    """
    return TrustNCGState(_setting(params, _positive("radius", radius)))


def _setting(params: Any, value: float) -> jax.Array:
    """``value`` in the dtype of the flattened parameters, replicated where they are (so that
    the state a step returns is laid out as the one it was given)."""
    leaves = jax.tree_util.tree_leaves(as_floating(params, "params"))
    dtype = jnp.result_type(*(x.dtype for x in leaves))
    return replicated_like(jnp.asarray(value, dtype), leaves)


def _setup(
    fun: Callable, params: Any, args: tuple, curvature: Callable | None
) -> tuple[Problem, jax.Array, Any, Any]:
    check_callable(fun, form="fun(params, *args) -> scalar")
    if curvature is not None:
        check_callable(curvature, "curvature", "curvature(params, *args) -> a jaxhvp operator")
    problem = Problem(fun, as_floating(params, "params"), args, curvature=curvature)
    x = problem.x0
    f, g, matvec = problem.linearize(x)
    return problem, x, (f, g), matvec


def _info(f, f_new, predicted, nonfinite, accepted_above, nhev) -> tuple[Any, ...]:
    """``(ratio, accepted, converged)`` of a trial step and the ``StepInfo`` for it."""
    converged = ~(predicted > 0) & ~nonfinite
    usable = ~nonfinite & (predicted > 0)
    ratio = jnp.where(usable, decrease_ratio(f, f_new, predicted), -jnp.inf)
    ratio = jnp.where(converged, jnp.nan, ratio)
    accepted = ratio > accepted_above
    return ratio, accepted, converged, StepInfo(f, ratio, accepted, converged, nhev)


def newton_cg_step(
    fun: Callable,
    params: Any,
    state: NewtonCGState,
    *args: Any,
    cg_maxiter: int = 50,
    min_damping: float = 1e-8,
    max_damping: float = 1e8,
    curvature: Callable | None = None,
) -> tuple[Any, NewtonCGState, StepInfo]:
    """One damped Newton-CG step on ``fun(params, *args)``: Hessian-free optimisation.

    Solves ``(H + lambda I) p = -g`` by scipy's truncated CG (at most ``cg_maxiter``
    Hessian products), evaluates ``fun`` at ``params + p`` on the same ``args`` (e.g. the
    same mini-batch), and compares the decrease with the undamped quadratic model's
    prediction, ``ratio = (f - f(params + p)) / -(g.p + p.Hp/2)`` (one more product). The
    step is taken if the objective decreased (``ratio > 0``); the damping is multiplied by
    3/2 if ``ratio < 1/4`` and by 2/3 if ``ratio > 3/4`` (Martens, 2010), and kept within
    ``[min_damping, max_damping]``. If the model predicts no decrease (the gradient is zero
    on this data, up to rounding in ``f``), the step is converged: nothing moves, the damping
    is kept, and ``info.converged`` is True. A pure function: use it inside your own
    ``jax.jit``. Costs one linearisation of the gradient, up to ``cg_maxiter + 1`` Hessian
    products, and one evaluation of ``fun``.

    Args:
      fun: the objective, ``fun(params, *args)`` -> one floating value.
      params: any pytree of floating arrays.
      state: from :func:`newton_cg_init` or the previous step.
      *args: the rest of ``fun``'s arguments (a mini-batch).
      cg_maxiter: the most CG iterations (Hessian products) per step.
      min_damping: the least damping (positive).
      max_damping: the largest damping.
      curvature: optionally, ``curvature(params, *args)`` returning a jaxhvp operator to use
        instead of the Hessian (e.g. ``jaxhvp.ggn_operator(model, loss, params, batches=...)``
        for Martens' Hessian-free with the Gauss-Newton matrix); the ratio's model uses it.

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
      >>> bool(loss(params, x, y) < 1e-4)
      True
    """
    min_damping, max_damping = _bounds("min_damping", min_damping, "max_damping", max_damping)
    cg_maxiter = _iterations(cg_maxiter)
    _state(state, NewtonCGState, "newton_cg_init")
    problem, x, (f, g), matvec = _setup(fun, params, args, curvature)
    damping = state.damping
    cg = truncated_cg(g, lambda v: matvec(v) + damping * v, cg_maxiter)
    Hp = matvec(cg.p)
    predicted = f - (f + (g @ cg.p + 0.5 * (cg.p @ Hp)))  # a decrease lost to rounding is 0
    f_new = problem.value(x + cg.p)
    nonfinite = ~finite(cg.p, predicted, f, g) | cg.nonfinite
    ratio, accepted, converged, info = _info(f, f_new, predicted, nonfinite, 0.0, cg.hvps + 1)
    adjusted = jnp.where(
        ratio < 0.25, damping * 1.5, jnp.where(ratio > 0.75, damping / 1.5, damping)
    )
    damping = jnp.where(converged, damping, jnp.clip(adjusted, min_damping, max_damping))
    new_x = jnp.where(accepted, x + cg.p, x)
    state = NewtonCGState(damping.astype(state.damping.dtype))
    return problem.tree(new_x), state, info


def trust_ncg_step(
    fun: Callable,
    params: Any,
    state: TrustNCGState,
    *args: Any,
    max_radius: float = 1000.0,
    min_radius: float = 1e-10,
    eta: float = 0.15,
    cg_maxiter: int = 50,
    curvature: Callable | None = None,
) -> tuple[Any, TrustNCGState, StepInfo]:
    """One trust-region Newton-CG step on ``fun(params, *args)``, for training loops.

    The step of ``minimize(method="trust-ncg")`` made once, on the ``args`` given (e.g. a
    mini-batch): Steihaug-Toint CG within the current radius (at most ``cg_maxiter``
    Hessian products), one evaluation of ``fun`` at the trial point, then scipy's acceptance
    (``ratio > eta``) and radius rules, the radius kept within ``[min_radius, max_radius]``.
    If the model predicts no decrease (the gradient is zero on this data, up to rounding in
    ``f``), the step is converged: nothing moves, the radius is kept, and
    ``info.converged`` is True. A pure function: use it inside your own ``jax.jit``. Costs
    one linearisation of the gradient, the products, and one evaluation.

    Args:
      fun: the objective, ``fun(params, *args)`` -> one floating value.
      params: any pytree of floating arrays.
      state: from :func:`trust_ncg_init` or the previous step.
      *args: the rest of ``fun``'s arguments (a mini-batch).
      max_radius: the largest radius.
      min_radius: the least radius (positive): rejected steps shrink the radius down to it.
      eta: the least ratio of actual to predicted decrease for a step to be taken.
      cg_maxiter: the most CG iterations (Hessian products) per step.
      curvature: optionally, ``curvature(params, *args)`` returning a jaxhvp operator used
        instead of the Hessian (a Gauss-Newton trust region with ``jaxhvp.ggn_operator``).

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
    min_radius, max_radius = _bounds("min_radius", min_radius, "max_radius", max_radius)
    cg_maxiter = _iterations(cg_maxiter)
    eta = _number("eta", eta)
    if not 0 <= eta < 1:
        msg = f"eta must satisfy 0 <= eta < 1, but got {eta}."
        raise HVPError(msg)
    _state(state, TrustNCGState, "trust_ncg_init")
    problem, x, (f, g), matvec = _setup(fun, params, args, curvature)
    sub = steihaug_cg(g, matvec, state.radius, cg_maxiter)
    predicted = predicted_decrease(f, g, sub)
    f_new = problem.value(x + sub.p)
    nonfinite = ~finite(sub.p, predicted, f, g) | sub.nonfinite
    ratio, accepted, converged, info = _info(f, f_new, predicted, nonfinite, eta, sub.hvps)
    adjusted = new_radius(state.radius, ratio, sub.on_boundary, max_radius)
    radius = jnp.where(converged, state.radius, jnp.clip(adjusted, min_radius, max_radius))
    new_x = jnp.where(accepted, x + sub.p, x)
    state = TrustNCGState(radius.astype(state.radius.dtype))
    return problem.tree(new_x), state, info
