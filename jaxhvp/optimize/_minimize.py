"""``jaxhvp.minimize``: scipy's Newton-CG and trust-ncg, run as one compiled loop.

The public entry point: the method table, scipy's options, ``callback``/``jac``/``hessp``,
``throw``, and the eager call. The loop is ``_loop.iterate``; the solvers are
``_newton_cg`` and ``_trust_ncg``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _eager
from .._errors import HVPError
from .._sharding import match_layout
from . import _callback
from ._loop import Solver, iterate
from ._newton_cg import NEWTON_CG
from ._problem import Problem, as_floating, check_callable
from ._result import MinimizeResult, MinimizeStatus, minimize_message
from ._trust_ncg import TRUST_NCG

_SOLVERS = {solver.NAME: solver for solver in (NEWTON_CG, TRUST_NCG)}


def minimize(
    fun: Callable,
    x0: Any,
    args: tuple = (),
    *,
    method: str,
    tol: float | None = None,
    options: dict | None = None,
    callback: Callable | None = None,
    jac: Any = None,
    hessp: Callable | None = None,
    curvature: Callable | None = None,
) -> MinimizeResult:
    """Minimises ``fun(x, *args)`` with scipy's Newton-CG or trust-ncg, inside one compiled loop.

    The calling convention of ``jax.scipy.optimize.minimize``; the algorithms, defaults and
    stopping rules of ``scipy.optimize.minimize`` with the same ``method``, so results and
    iteration counts are comparable. Every Hessian product is exact (automatic
    differentiation, never finite differences); the objective, gradient and Hessian-product
    work of an outer step is shared by linearising the gradient once per point.

    Works under ``jax.jit`` and ``jax.vmap`` (over ``x0`` and ``args``: many problems at
    once). An eager call runs a cached compiled kernel, as the other jaxhvp functions do;
    option values enter it as arrays, so changing them does not recompile.
    Failures inside the loop (iteration limit, line-search failure, NaN or Inf) never raise:
    they come back in ``status`` and ``success``.

    Args:
      fun: the objective, ``fun(x, *args)`` -> an array with one element.
      x0: the initial point: an array or any pytree of floating arrays (a list of numbers is
        one vector, as in scipy).
      args: a tuple of extra arguments to ``fun`` (arrays or pytrees of arrays). Python
        numbers in it are passed as weakly typed arrays, as ``jax.jit`` passes positional
        numbers: a new value is not a recompile.
      method: ``"newton-cg"`` (line-search Newton-CG) or ``"trust-ncg"`` (trust-region
        Newton-CG, Steihaug-Toint); case-insensitive, so scipy's ``"Newton-CG"`` works.
      tol: scipy's ``tol``: ``xtol`` for Newton-CG, ``gtol`` for trust-ncg (an entry in
        ``options`` wins).
      options: scipy's options for the method. Newton-CG: ``maxiter`` (default 200 n),
        ``xtol`` (1e-5: stop when the mean absolute step is below it), ``c1`` (1e-4) and
        ``c2`` (0.9) of the Wolfe conditions. trust-ncg: ``maxiter`` (200 n), ``gtol``
        (1e-4: stop when the gradient 2-norm is below it), ``initial_trust_radius`` (1.0),
        ``max_trust_radius`` (1000.0), ``eta`` (0.15). Both: ``cg_maxiter`` (20 n) bounds the
        inner CG iterations; ``throw`` (False): if True, a failed solve raises a
        ``RuntimeError`` with the message (eagerly; under ``jax.jit`` it is raised when the
        computation runs, as a ``jax.errors.JaxRuntimeError``). scipy's ``eps``, ``workers``
        and ``disp=False`` are accepted and ignored.
      callback: scipy's new-style callback, ``callback(intermediate_result)``, called by that
        keyword (as scipy calls it) after every iteration with an :class:`IntermediateResult`
        (``x`` in the structure of ``x0``, ``fun``, ``nit``) of concrete arrays (host copies
        on one device, not in ``x0``'s shardings), from a host callback inside the compiled
        loop (eagerly and under ``jax.jit``; not under ``jax.vmap``, where JAX allows no host
        callback in a loop of batch-dependent length).
        Raising ``StopIteration`` stops the run: ``status`` 99
        (``MinimizeStatus.CALLBACK_STOPPED``), as scipy's. Any other
        exception stops it and is raised: eagerly as it is, under ``jax.jit`` wrapped in a
        ``jax.errors.JaxRuntimeError`` when the computation runs.
      jac: scipy's ``jac``: None or False (the gradient by reverse-mode differentiation of
        ``fun``), True (``fun`` returns ``(value, gradient)``), or ``jac(x, *args)``
        returning the gradient in the structure of ``x0``. Hessian products then
        differentiate the given gradient (forward mode), unless ``hessp`` is given.
      hessp: scipy's ``hessp(x, p, *args)``: the Hessian (or a Gauss-Newton or other
        curvature matrix) at ``x`` times ``p``, in the structure of ``x0``. With it, nothing
        is differentiated twice; ``nhev`` counts its calls.
      curvature: instead of ``hessp``, ``curvature(x, *args)`` returning any jaxhvp
        operator in the structure of ``x0`` (e.g. ``jaxhvp.ggn_operator(model, loss, x)``
        for a Gauss-Newton trust region, or a damped Hessian), built once per iterate; its
        products are the inner CG's curvature. ``fun`` still gives the value and gradient.

    Returns:
      A :class:`MinimizeResult`; ``result.message`` gives the words for ``result.status``.

    Raises:
      TypeError: ``fun``, ``callback`` or ``hessp`` not callable, ``jac`` neither a bool nor
        callable, ``method`` not a string, ``args`` not a tuple, ``options`` not a dict, or
        ``x0`` not a pytree of arrays.
      HVPError: an unknown method or option, an invalid option value, non-floating or empty
        ``x0``, an objective that does not return a single floating value, or ``jac`` or
        ``hessp`` results without the structure, shapes or a floating dtype of ``x0``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> def rosenbrock(x):
      ...     return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
      >>> result = jaxhvp.minimize(rosenbrock, jnp.array([-1.2, 1.0]), method="trust-ncg")
      >>> result.x.round(3), result.success, result.message
      (Array([1., 1.], dtype=float32), Array(True, dtype=bool),
       'Optimization terminated successfully.')
    """
    check_callable(fun)
    solver = _solver(method)
    if not isinstance(args, tuple):
        msg = (
            f"args must be a tuple of extra arguments to fun, but got {type(args)}; "
            "wrap a single argument as args=(arg,)."
        )
        raise TypeError(msg)
    jac_returned = _check_derivatives(callback, jac, hessp, curvature)
    options = _resolve_options(solver, tol, options)
    throw = bool(options.pop("throw", False))
    args = jax.tree_util.tree_map(_as_traced, args)
    x0 = as_floating(x0, "x0")
    size = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(x0))
    config = _as_arrays(solver.configure(options, size))
    functions = (fun, jac if callable(jac) else None, hessp, curvature)
    arrays = (x0, args, config)
    eager_callback = callback is not None and _eager.is_eager(arrays)
    if callback is None:
        hook = None
    else:
        hook = _callback.eager_hook if eager_callback else _callback.traced_hook(callback)
    with _callback.registered(callback if eager_callback else None) as token:
        try:
            result = _eager.call(_solve, (solver, jac_returned, hook), functions, (*arrays, token))
        except TypeError as error:
            if "custom_vjp" not in str(error):
                raise
            msg = (
                f"fun cannot be differentiated in forward mode (it is a jax.custom_vjp function), "
                f"which method={solver.NAME!r} does for its line-search slopes and Hessian "
                "products. Pass jac=jax.grad(fun) (slopes from the gradient) and, if the "
                "Hessian products fail too, hessp=..."
            )
            raise TypeError(msg) from error
        if eager_callback:
            result = jax.block_until_ready(result)
    result = result._replace(x=match_layout(result.x, x0), jac=match_layout(result.jac, x0))
    if throw:
        _raise_if_failed(result.status, solver.NAME)
    return result


def _solver(method: Any) -> Solver:
    methods = _SOLVERS
    if not isinstance(method, str):
        msg = f"method must be a string, one of {sorted(methods)}, but got {type(method)}."
        raise TypeError(msg)
    solver = methods.get(method.lower())
    if solver is None:
        msg = (
            f"Unknown method {method!r}: jaxhvp.minimize supports {sorted(methods)} "
            "(case-insensitive; scipy's spellings 'Newton-CG' and 'trust-ncg' work). For "
            "BFGS use jax.scipy.optimize.minimize."
        )
        raise HVPError(msg)
    return solver


def _check_derivatives(callback: Any, jac: Any, hessp: Any, curvature: Any) -> bool:
    """Checks scipy's ``callback``, ``jac`` and ``hessp``, and ``curvature``; whether ``fun``
    returns the gradient with the value (``jac=True``)."""
    if callback is not None:
        _callback.check(callback)
    if hessp is not None:
        check_callable(hessp, "hessp", "hessp(x, p, *args) -> H p")
    if curvature is not None:
        check_callable(curvature, "curvature", "curvature(x, *args) -> a jaxhvp operator")
        if hessp is not None:
            msg = "Give hessp or curvature, not both: both define the inner CG's products."
            raise HVPError(msg)
    if not (jac is None or isinstance(jac, bool) or callable(jac)):
        msg = (
            "jac must be None, a bool (True: fun returns (value, gradient)) or a callable "
            f"jac(x, *args) -> gradient, but got {type(jac)}."
        )
        raise TypeError(msg)
    return jac is True


# scipy options with no meaning here: a value that asks for what cannot happen inside a
# compiled loop is rejected with the alternative; the others are accepted and ignored.
_UNSUPPORTED = {
    "disp": "messages cannot be printed from inside a compiled loop; read result.message",
    "return_all": "the loop keeps no history of iterates; run it step by step to record them",
}
# scipy's finite-difference step and workers: jaxhvp's derivatives are exact, never differenced.
_IGNORED = ("eps", "workers")


def _resolve_options(solver: Solver, tol: float | None, options: dict | None) -> dict:
    """scipy's option names for ``solver``, checked; ``tol`` filled in as scipy does."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        msg = f"options must be a dict of option names to values, but got {type(options)}."
        raise TypeError(msg)
    resolved = {}
    for name, value in options.items():
        if name in _UNSUPPORTED:
            if value:
                msg = f"options[{name!r}]={value!r} is not supported: {_UNSUPPORTED[name]}."
                raise HVPError(msg)
        elif name in _IGNORED:
            pass
        elif name in solver.OPTIONS or name == "throw":
            resolved[name] = value
        else:
            valid = sorted({*solver.OPTIONS, "throw", *_IGNORED, "disp"})
            msg = (
                f"Unknown option {name!r} for method {solver.NAME!r}; the valid options are "
                f"{valid}."
            )
            raise HVPError(msg)
    if tol is not None:
        resolved.setdefault(solver.TOL_OPTION, tol)
    return resolved


def _as_arrays(config: Any) -> Any:
    """Option values as arrays, so that a new value is new data for the compiled kernel, not
    a new kernel. Counts are int32 (capped at its largest value), the rest floating."""

    def as_array(value: Any) -> jax.Array:
        if isinstance(value, int):
            return jnp.asarray(min(value, np.iinfo(np.int32).max), jnp.int32)
        return jnp.asarray(value)

    return type(config)(*map(as_array, config))


def _as_traced(leaf: Any) -> Any:
    """A Python number as ``jax.jit`` traces a positional one: a weakly typed array."""
    if type(leaf) in (int, float, complex):
        return jnp.asarray(leaf)
    return leaf


def _solve(
    functions: tuple,
    x0: Any,
    args: tuple,
    config: Any,
    token: jax.Array,
    solver: Solver,
    jac_returned: bool,
    hook: Callable | None,
) -> MinimizeResult:
    """The compiled solve: the problem over the flattened ``x0``, run by the shared loop."""
    fun, jac, hessp, curvature = functions
    problem = Problem(fun, x0, args, True if jac_returned else jac, hessp, curvature)
    config = jax.tree_util.tree_map(
        lambda v: v.astype(problem.dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v,
        config,
    )
    return iterate(solver, problem, config, hook, token)


def _raise_if_failed(status: Any, method: str) -> None:
    """``options["throw"]``: raise for a failed solve, now or when the computation runs."""

    def check(codes: Any) -> None:
        codes = np.asarray(codes)
        failed = codes[codes != MinimizeStatus.SUCCESS]
        if failed.size:
            msg = (
                f"jaxhvp.minimize(method={method!r}) failed: {minimize_message(failed.flat[0])} "
                f"(status {int(failed.flat[0])}). Check result.status instead of raising by "
                'leaving options["throw"] False, or raise maxiter or tol.'
            )
            raise RuntimeError(msg)

    if isinstance(status, jax.core.Tracer):
        jax.debug.callback(check, status)
    else:
        check(status)
