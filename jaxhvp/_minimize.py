"""``jaxhvp.minimize``: scipy's Newton-CG and trust-ncg, run as one compiled loop.

This module holds what the two solvers share: the public entry point, the result type, the
status codes and their messages, and the one function through which every Hessian-vector
product is taken (:func:`hessian_matvec`). The algorithms live in ``_newton_cg.py`` and
``_trust_ncg.py``; each lists the options it accepts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _eager
from ._errors import HVPError
from ._operator import hessian_operator


class MinimizeStatus(enum.IntEnum):
    """Why a solve stopped: the ``status`` of a :class:`MinimizeResult`.

    Codes are set inside the compiled loop, where strings cannot live;
    :func:`minimize_message` turns them into words.
    """

    SUCCESS = 0
    MAX_ITERATIONS = 1
    LINE_SEARCH_FAILED = 2
    NONFINITE = 3
    CG_NOT_CONVERGED = 4
    NO_PREDICTED_DECREASE = 5


RUNNING = -1  # the status inside the loop until one of the codes above is set


def running() -> jax.Array:
    """``RUNNING`` as the int32 array every status chain starts from (never weakly typed)."""
    return jnp.asarray(RUNNING, jnp.int32)


_MESSAGES = {
    MinimizeStatus.SUCCESS: "Optimization terminated successfully.",
    MinimizeStatus.MAX_ITERATIONS: "Maximum number of iterations has been exceeded.",
    MinimizeStatus.LINE_SEARCH_FAILED: (
        "Desired error not necessarily achieved due to precision loss: the Wolfe line search "
        "found no acceptable step length."
    ),
    MinimizeStatus.NONFINITE: (
        "NaN or Inf encountered in the objective, its gradient or a Hessian product."
    ),
    MinimizeStatus.CG_NOT_CONVERGED: (
        "CG iterations didn't converge. The Hessian is not positive definite."
    ),
    MinimizeStatus.NO_PREDICTED_DECREASE: (
        "A bad approximation caused failure to predict improvement."
    ),
}


def minimize_message(status: Any) -> Any:
    """The message for a status code of :func:`minimize`, as scipy's ``result.message``.

    Args:
      status: a status code (``result.status``): a Python int or a concrete integer array.
        For an array (results of a ``jax.vmap``), a numpy array of messages of its shape.

    Returns:
      A ``str``, or a numpy array of ``str`` for an array of codes.

    Raises:
      HVPError: an unknown code.
      TypeError: ``status`` is a tracer (inside ``jax.jit``): read messages outside it.

    Examples:
      >>> import jaxhvp
      >>> jaxhvp.minimize_message(1)
      'Maximum number of iterations has been exceeded.'
    """
    if isinstance(status, jax.core.Tracer):
        msg = (
            "minimize_message needs a concrete status code, but got a tracer: messages are "
            "strings and cannot exist inside jax.jit or jax.vmap. Return result.status from the "
            "traced function and call minimize_message on it outside."
        )
        raise TypeError(msg)
    codes = np.asarray(status)
    if not np.issubdtype(codes.dtype, np.integer):
        msg = f"Expected an integer status code, but got {status!r} of dtype {codes.dtype}."
        raise HVPError(msg)
    unknown = sorted(set(codes.ravel().tolist()) - set(_MESSAGES))
    if unknown:
        msg = (
            f"Unknown status code(s) {unknown}; the codes of jaxhvp.minimize are "
            f"{ {int(s): s.name for s in MinimizeStatus} }."
        )
        raise HVPError(msg)
    if codes.ndim == 0:
        return _MESSAGES[MinimizeStatus(int(codes))]
    return np.vectorize(lambda c: _MESSAGES[MinimizeStatus(int(c))], otypes=[object])(codes)


class MinimizeResult(NamedTuple):
    """What :func:`minimize` returns: a pytree, so it crosses ``jax.jit`` and ``jax.vmap``.

    Attributes:
      x: the solution, with the structure, shapes and dtypes of ``x0``.
      fun: the objective at ``x``.
      jac: the gradient at ``x``, with the structure of ``x0``.
      nit: the number of iterations (scipy counts the same way).
      nfev: the number of objective evaluations.
      njev: the number of gradient evaluations (a line-search trial counts one, as in scipy).
      nhev: the number of Hessian-vector products computed.
      success: whether ``status`` is ``MinimizeStatus.SUCCESS``.
      status: a :class:`MinimizeStatus` code, as an int array.
    """

    x: Any
    fun: jax.Array
    jac: Any
    nit: jax.Array
    nfev: jax.Array
    njev: jax.Array
    nhev: jax.Array
    success: jax.Array
    status: jax.Array

    @property
    def message(self) -> Any:
        """The words for ``status`` (outside ``jax.jit`` only); see :func:`minimize_message`."""
        return minimize_message(self.status)


class StepInfo(NamedTuple):
    """What one training step (``newton_cg_step``, ``trust_ncg_step``) reports; a pytree.

    Attributes:
      fun: the objective at the parameters before the step, on this step's data.
      ratio: actual over predicted reduction of the step (``-inf`` when the trial value is
        NaN or Inf, or when the quadratic model predicts no decrease).
      accepted: whether the parameters were moved.
      nhev: the number of Hessian-vector products computed.
    """

    fun: jax.Array
    ratio: jax.Array
    accepted: jax.Array
    nhev: jax.Array


# --- the pieces every solver uses -------------------------------------------------------------


def check_callable(fun: Any) -> None:
    """The objective must be callable, as ``fun(x, *args)``."""
    if not callable(fun):
        msg = f"fun must be callable, as fun(x, *args) -> scalar, but got {type(fun)}."
        raise TypeError(msg)


def hessian_matvec(fun: Callable, x: jax.Array, args: tuple) -> tuple[Any, Any, Callable]:
    """``(value, gradient, v -> H v)`` of ``fun(x, *args)`` at a flat ``x``.

    The value, the gradient and the residuals of the Hessian product are computed once here,
    by :func:`jaxhvp.hessian_operator` (forward-over-reverse); each product then runs only
    the linear sweep, without redoing the primal pass. Every solver takes its Hessian
    products through this one function.
    """
    op = hessian_operator(lambda y: fun(y, *args), x)
    return op.value.reshape(()), op.grad, op.mv


def directional(fun: Callable, x: jax.Array, p: jax.Array, args: tuple) -> tuple[Any, Any]:
    """``(fun(x), <grad fun(x), p>)`` by one forward-mode product: a line-search trial."""
    return jax.jvp(lambda y: fun(y, *args), (x,), (p,))


def finite(*values: jax.Array) -> jax.Array:
    """Whether every element of every value is finite (NaN and Inf are not)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))


def count() -> jax.Array:
    """A zero counter: counters are int32 arrays, as jax.scipy.optimize keeps them."""
    return jnp.zeros((), jnp.int32)


def option_count(name: str, value: Any, minimum: int = 0) -> None:
    """Checks an iteration-count option: an int (not a bool) of at least ``minimum``, or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        msg = f"options[{name!r}] must be an int or None, but got {type(value)}."
        raise TypeError(msg)
    if value is not None and value < minimum:
        msg = f"options[{name!r}] must be at least {minimum}, but got {value}."
        raise HVPError(msg)


def option_float(name: str, value: Any) -> float:
    """A number option as a Python float (hashable, for the compiled-kernel cache key)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        msg = f"options[{name!r}] must be a number, but got {value!r}."
        raise TypeError(msg) from None


# --- the public entry point -------------------------------------------------------------------


def _methods() -> dict[str, Any]:
    """Method name -> solver module. Imported here: the solvers build on this module's types."""
    from . import _newton_cg, _trust_ncg

    return {"newton-cg": _newton_cg, "trust-ncg": _trust_ncg}


def minimize(
    fun: Callable,
    x0: Any,
    args: tuple = (),
    *,
    method: str,
    tol: float | None = None,
    options: dict | None = None,
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
      x0: the initial point: an array or any pytree of floating arrays.
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
        computation runs, as a ``jax.errors.JaxRuntimeError``). scipy's ``eps`` and
        ``disp=False`` are accepted and ignored.

    Returns:
      A :class:`MinimizeResult`; ``result.message`` gives the words for ``result.status``.

    Raises:
      TypeError: ``fun`` not callable, ``method`` not a string, ``args`` not a tuple,
        ``options`` not a dict, or ``x0`` not a pytree of arrays.
      HVPError: an unknown method or option, an invalid option value, non-floating ``x0``,
        or an objective that does not return a single floating value.

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
    module = _method(method)
    if not isinstance(args, tuple):
        msg = (
            f"args must be a tuple of extra arguments to fun, but got {type(args)}; "
            "wrap a single argument as args=(arg,)."
        )
        raise TypeError(msg)
    options = _resolve_options(module, tol, options)
    throw = bool(options.pop("throw", False))
    args = jax.tree_util.tree_map(_as_traced, args)
    x0 = as_floating(x0, "x0")
    size = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(x0))
    config = _as_arrays(module.make_config(options, size))
    result = _eager.call(_solve, (module.solve,), fun, (x0, args, config))
    if throw:
        _raise_if_failed(result.status, module.NAME)
    return result


def _method(method: Any) -> Any:
    methods = _methods()
    if not isinstance(method, str):
        msg = f"method must be a string, one of {sorted(methods)}, but got {type(method)}."
        raise TypeError(msg)
    module = methods.get(method.lower())
    if module is None:
        msg = (
            f"Unknown method {method!r}: jaxhvp.minimize supports {sorted(methods)} "
            "(case-insensitive; scipy's spellings 'Newton-CG' and 'trust-ncg' work). For "
            "BFGS use jax.scipy.optimize.minimize."
        )
        raise HVPError(msg)
    return module


# scipy options with no meaning here: a value that asks for what cannot happen inside a
# compiled loop is rejected with the alternative; the others are accepted and ignored.
_UNSUPPORTED = {
    "disp": "messages cannot be printed from inside a compiled loop; read result.message",
    "return_all": "the loop keeps no history of iterates; run it step by step to record them",
}
_IGNORED = ("eps",)  # scipy's finite-difference step: jaxhvp's Hessian products are exact


def _resolve_options(module: Any, tol: float | None, options: dict | None) -> dict:
    """scipy's option names for ``module``, checked; ``tol`` filled in as scipy does."""
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
        elif name in module.OPTIONS or name == "throw":
            resolved[name] = value
        else:
            valid = sorted({*module.OPTIONS, "throw", *_IGNORED, "disp"})
            msg = (
                f"Unknown option {name!r} for method {module.NAME!r}; the valid options are "
                f"{valid}."
            )
            raise HVPError(msg)
    if tol is not None:
        resolved.setdefault(module.TOL_OPTION, tol)
    return resolved


def as_floating(tree: Any, name: str) -> Any:
    """``tree`` with jax array leaves, all real floating; raises with the fix otherwise."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        msg = f"{name} must contain at least one array, but got {tree!r}, which has no leaves."
        raise HVPError(msg)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int)):
            msg = f"{name} must be an array or a pytree of arrays, but {where} is a {type(leaf)}."
            raise TypeError(msg)
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            msg = (
                f"{name} must hold real floating arrays, but {where} has dtype {dtype}; "
                "convert it, e.g. with .astype(float)."
            )
            raise HVPError(msg)
    return jax.tree_util.tree_map(jnp.asarray, tree)


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


def _solve(fun: Callable, x0: Any, args: tuple, config: Any, solve: Callable) -> MinimizeResult:
    """Runs a solver on the flattened problem and gives ``x`` and ``jac`` x0's structure."""
    x_flat, unravel, flat_fun = flatten(fun, x0)
    config = jax.tree_util.tree_map(
        lambda v: v.astype(x_flat.dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, config
    )
    result = solve(flat_fun, x_flat, args, config)
    return result._replace(x=unravel(result.x), jac=unravel(result.jac))


def flatten(fun: Callable, x: Any) -> tuple[jax.Array, Callable, Callable]:
    """``(x as one vector, vector -> pytree, fun of the vector)``: solvers work on vectors.

    The flat function checks at trace time that ``fun`` returns a single floating value.
    """
    x_flat, unravel = ravel_pytree(x)

    def flat_fun(y: jax.Array, *args: Any) -> jax.Array:
        return _scalar(fun(unravel(y), *args), y.dtype)

    return x_flat, unravel, flat_fun


def _scalar(out: Any, dtype: Any) -> jax.Array:
    """The objective's output as a scalar of the solve's dtype; checked at trace time."""
    if not isinstance(out, (jax.Array, np.ndarray, float)) or np.size(out) != 1:
        shape = getattr(out, "shape", None)
        msg = (
            "fun must return a single value (an array with one element), but returned "
            f"{type(out).__name__} of shape {shape}; reduce it to a scalar, e.g. with .sum()."
        )
        raise HVPError(msg)
    out = jnp.asarray(out)
    if not jnp.issubdtype(out.dtype, jnp.floating):
        msg = f"fun must return a floating value, but returned dtype {out.dtype}."
        raise HVPError(msg)
    return out.reshape(()).astype(dtype)


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
