"""The only place jaxhvp reads JAX internals: whether a call runs at top level, which
primitives of a traced program call back into Python, and the class of concrete arrays.

JAX has no public "is anything being traced?". ``at_top_level`` reads the trace state
directly where this JAX version has it (a few attribute reads: it is on every eager call's
path) and otherwise uses a public test that is slower but never wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _public_check() -> bool:
    """Top level iff an operation on a concrete array gives a concrete array."""
    return not isinstance(jnp.zeros(()) + 0, jax.core.Tracer)


def _private_check() -> Callable[[], bool] | None:
    try:
        from jax._src import core
    except ImportError:  # pragma: no cover
        return None
    names = ("trace_state_strong_ref", "axis_env_state", "eval_trace", "top_axis_env")
    if all(hasattr(core, name) for name in names):  # JAX 0.10
        trace, axis_env = core.trace_state_strong_ref, core.axis_env_state
        eval_trace, top_axis_env = core.eval_trace, core.top_axis_env

        def fast() -> bool:
            return trace.value is eval_trace and axis_env.value is top_axis_env

        return fast
    trace_ctx = getattr(core, "trace_ctx", None)
    if trace_ctx is not None and hasattr(trace_ctx, "is_top_level"):
        return trace_ctx.is_top_level
    return None


class _Recorded(Exception):
    """Ends a probe's trace once it has recorded the check: nothing is computed."""


def _verified(check: Callable[[], bool] | None) -> Callable[[], bool]:
    """``check`` if it answers right at top level and under jit, vmap and grad; else the
    public test. The probes stop as soon as they have traced, so that importing jaxhvp
    starts no JAX backend (``jax.distributed.initialize`` must come before that)."""
    if check is None:
        return _public_check
    seen = []

    def probe(x: Any) -> Any:
        seen.append(check())
        raise _Recorded

    try:
        ok = check()
        for transform, arg in ((jax.jit, 1.0), (jax.vmap, np.ones(1)), (jax.grad, 1.0)):
            with contextlib.suppress(_Recorded):
                transform(probe)(arg)
    except Exception:  # pragma: no cover
        return _public_check
    return check if ok and seen == [False, False, False] else _public_check


at_top_level = _verified(_private_check())
FAST_TOP_LEVEL_CHECK = at_top_level is not _public_check


def _array_type() -> type:
    """The class of JAX's concrete arrays, read without making one: making an array starts
    JAX's backend, which a multi-process program must not do before it calls
    ``jax.distributed.initialize``, so importing jaxhvp must not either."""
    try:
        from jax._src.array import ArrayImpl
    except ImportError:  # pragma: no cover
        return type(jnp.zeros(()))
    return ArrayImpl


ARRAY_TYPE = _array_type()


def _staging_cache_clearer() -> Callable[[], None]:
    try:
        from jax._src import util
    except ImportError:  # pragma: no cover
        return jax.clear_caches
    return getattr(util, "clear_all_caches", jax.clear_caches)


forget_traces = _staging_cache_clearer()
forget_traces.__doc__ = """Drops JAX's cached traces (not its compiled executables).

JAX caches the traces of ``lax.scan`` bodies, ``jax.checkpoint`` functions and inner
``jax.jit`` functions by function identity, assuming that what a function reads does not
change under it. A kernel trace breaks that assumption while tracers stand in the user's
objects, so the traces made meanwhile must not outlive it."""

_CALLBACKS = frozenset({"debug_callback", "pure_callback", "io_callback", "callback"})
_LIBRARY_CALLBACKS: set[Callable] = set()


def library_callback(function: Callable) -> Callable:
    """Marks ``function`` as a host callback of jaxhvp itself: a kernel that calls it reads
    nothing a cached kernel could keep stale (the function looks up its work at run time),
    so :func:`calls_back` does not count it."""
    _LIBRARY_CALLBACKS.add(function)
    return function


def _is_library_callback(eqn: Any) -> bool:
    target = getattr(eqn.params.get("callback"), "callback_func", None)
    return target is not None and target in _LIBRARY_CALLBACKS


def calls_back(closed_jaxpr: Any) -> bool:
    """Whether a traced program (or one nested in it) calls back into Python."""
    stack, seen = [closed_jaxpr], set()
    while stack:
        jaxpr = stack.pop()
        jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
        if id(jaxpr) in seen or not hasattr(jaxpr, "eqns"):
            continue
        seen.add(id(jaxpr))
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in _CALLBACKS and not _is_library_callback(eqn):
                return True
            for param in eqn.params.values():
                for value in param if isinstance(param, (tuple, list)) else (param,):
                    if hasattr(value, "eqns") or hasattr(getattr(value, "jaxpr", None), "eqns"):
                        stack.append(value)
    return False


def trace_jaxpr(jitted: Callable, *args: Any) -> Any:
    """The program ``jitted(*args)`` traces to (the trace is kept by ``jax.jit``)."""
    trace = getattr(jitted, "trace", None)
    if trace is not None:
        return trace(*args).jaxpr
    return jax.make_jaxpr(jitted)(*args)  # pragma: no cover (older JAX)
