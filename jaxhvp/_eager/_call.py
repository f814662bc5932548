"""``call``: the one entry point of every eager call in jaxhvp.

An eager call (top level, concrete arrays, ``jit=True``) is split (``_walk``) into a key and
the arrays the function reads, and runs the key's ``jax.jit`` kernel on its arguments and
those arrays. The kernel traces the user's own function with tracers swapped into the places
that hold the arrays (``_swap``). Whatever could make a compiled kernel differ from the same
call with ``jit=False`` makes the key run uncached (op by op) instead, with one warning
naming why: a value the walk cannot describe, Python control flow on a traced value, writes
to the objects the function reads, host callbacks, or a key that keeps changing. Under an
outer trace (the user's ``jit``, ``vmap``, ``grad``) nothing is cached: the caller traces.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np

from .._errors import HVPError
from . import _values, _walk
from ._jax import at_top_level, calls_back, forget_traces, trace_jaxpr
from ._store import DEFAULT_MAXSIZE, PER_SOURCE, CacheInfo, Store
from ._swap import LOCK, Rebound, changed, restore, snapshot, swapped

STORE = Store(DEFAULT_MAXSIZE)
# (func, split, entry) of the call in flight: calls hold LOCK, so one at a time.
_current = types.SimpleNamespace(call=None)
_JAX_ARRAY_TYPES = frozenset({_values.JAX_ARRAY})

# Errors of Python code that needs a concrete value where the kernel has a tracer.
_CONCRETE_VALUE_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.NonConcreteBooleanIndexError,
)

WHY = {
    "concrete values": (
        "it needs the concrete value of an array it reads or is given (Python control flow, "
        "float() or int(), a numpy function, a boolean mask), which a compiled kernel only "
        "sees as a tracer"
    ),
    "writes": "it changes objects it reads while it runs, which a kernel would do only once",
    "callbacks": (
        "it calls back into Python (jax.debug.callback or print, jax.pure_callback, "
        "io_callback), and a kernel keeps the callables of the call that compiled it"
    ),
    "recompiles": "its kernels keep being recompiled",
    "outputs": (
        "it returns Python objects other than arrays, numbers and strings (a numpy array, "
        "an object), which a kernel would return as they were when it was traced"
    ),
}


class _Outputs(Exception):
    """The traced function returned values a kernel cannot return afresh."""


class PerSignature:
    """A static option decided once per signature of a call (key, shapes and dtypes).

    ``decide`` returns the value for a signature, or ``None`` while undecided; ``measure``
    decides it, given ``run(value)``, which makes the call with ``value`` for the option.
    Under an outer trace an undecided option takes ``default``.
    """

    default: Any = None

    def decide(self, signature: Hashable) -> Any:
        raise NotImplementedError

    def measure(self, signature: Hashable, run: Callable[[Any], Any]) -> None:
        raise NotImplementedError


class _Static:
    """A non-array output of a kernel, carried in the output's structure."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


jax.tree_util.register_pytree_node(_Static, lambda s: ((), s.value), lambda v, _: _Static(v))


def cache_info() -> CacheInfo:
    """Counters of eager calls: kernels found and made, walks, and calls run uncached.

    See :class:`jaxhvp.CacheInfo` for the fields.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> jaxhvp.cache_clear()
      >>> for _ in range(3):
      ...     _ = jaxhvp.hvp(lambda x: (x**3).sum(), jnp.ones(3), jnp.ones(3))
      >>> info = jaxhvp.cache_info()
      >>> info.hits, info.misses, info.compilations, info.uncached
      (2, 1, 1, 0)
    """
    return STORE.info(_walk.Counters.walks, _walk.Counters.guard_misses)


def cache_clear(maxsize: int | None = None) -> None:
    """Frees every kernel jaxhvp keeps, resets the counters, and optionally sets the bound.

    Args:
      maxsize: the most entries kept (least recently used go first); default unchanged
        (initially 64).
    """
    if maxsize is not None and (not isinstance(maxsize, int) or maxsize < 1):
        msg = f"maxsize must be a positive int, but got {maxsize!r}."
        raise ValueError(msg)
    with LOCK:
        STORE.clear(maxsize)
        _walk.forget()
        _walk.Counters.walks = _walk.Counters.guard_misses = 0
        _warned.clear()
        for forget in _on_clear:
            forget()


_on_clear: list[Callable[[], None]] = []  # other memos of the package (auto choices)


def is_eager(args: tuple) -> bool:
    """Whether a call with these arguments runs at top level on concrete arrays."""
    return _eagerness(args) != _TRACED


_TRACED, _JAX_ONLY, _WITH_NUMPY = 0, 1, 2


def _eagerness(args: tuple) -> int:
    """``_TRACED`` unless at top level with arrays only; then whether numpy arrays are among
    them (the call must then finish before it returns)."""
    if not at_top_level():
        return _TRACED
    for arg in args:
        if type(arg) not in _JAX_ARRAY_TYPES:
            leaves = jax.tree_util.tree_leaves(args)
            if not (leaves and all(map(_values.is_array, leaves))):
                return _TRACED
            return _WITH_NUMPY if any(type(x) is np.ndarray for x in leaves) else _JAX_ONLY
    return _JAX_ONLY


def call(impl: Callable, options: tuple, func: Any, args: tuple, jit: bool = True) -> Any:
    """``impl(func, *args, *options)``: through a cached kernel when eager, else directly.

    ``impl`` must be traceable and ``options`` a hashable tuple of its static arguments.
    Returns exactly what the call with ``jit=False`` returns.
    """
    eagerness = _eagerness(args) if jit else _TRACED
    if eagerness == _TRACED:
        return _direct(impl, options, func, args)
    with LOCK:
        try:
            split = _walk.split(func)
        except _walk.Uncached as uncached:
            return _uncached(uncached.reason, func, impl, options, args)
        return _run(impl, options, func, args, split, eagerness)


def _run(impl: Callable, options: tuple, func: Any, args: tuple, split: Any, eagerness: int):
    """The eager call of ``func``, split: its kernel, made if new (callers hold ``LOCK``)."""
    key = (impl, options, split.skeleton)
    entry = STORE.entries.get(key)
    fresh = entry is None
    if fresh:
        if any(isinstance(o, PerSignature) for o in options):  # mode="auto": measure first
            _decided(impl, options, func, args, split.skeleton, split.leaves, measure=True)
        _warn_if_narrowed(split.leaves, func)
        build = functools.partial(_build, impl, options)
        family = (impl, _source(func), _values.without_values(split.skeleton.tree))
        entry = STORE.insert(key, family, build, None)
    else:
        entry.referenced = True
        next(STORE.hits)
    if entry.kernel is None:
        return _uncached(entry.reason, func, impl, options, args, (key, entry.family))
    _current.call = (func, split, entry)
    traces = STORE.compilations
    try:
        if fresh and calls_back(trace_jaxpr(entry.kernel, args, split.leaves)):
            STORE.make_uncached(entry, "callbacks")
            return _uncached("callbacks", func, impl, options, args)
        out = entry.kernel(args, split.leaves)
    except Rebound:
        STORE.make_uncached(entry, "writes")
        return _uncached("writes", func, impl, options, args)
    except _Outputs:
        STORE.make_uncached(entry, "outputs")
        return _uncached("outputs", func, impl, options, args)
    except _CONCRETE_VALUE_ERRORS:
        STORE.make_uncached(entry, "concrete values")
        return _uncached("concrete values", func, impl, options, args)
    except AttributeError as error:  # x.strides, x.flat: numpy's, not a tracer's
        if "Tracer" not in str(error):
            raise
        STORE.make_uncached(entry, "concrete values")
        return _uncached("concrete values", func, impl, options, args)
    except (HVPError, TypeError) as error:
        # Raised while tracing: drop the note jax.jit adds about its own frames, so the
        # error reads as it does eagerly.
        notes = getattr(error, "__notes__", [])
        notes[:] = [n for n in notes if "JAX has removed its internal frames" not in n]
        raise
    finally:
        _current.call = None
        if STORE.compilations != traces and split.skeleton.plan:
            forget_traces()  # the traces JAX cached while tracers stood in user objects
    if entry.undecided:  # a new signature of mode="auto": measure, then trace it again
        entry.undecided = False
        _decided(impl, options, func, args, split.skeleton, split.leaves, measure=True)
        STORE.replace_kernel(entry, _build(impl, options))
    if entry.static_outputs:
        out = jax.tree_util.tree_map(_unwrap, out, is_leaf=_is_static)
    if eagerness == _WITH_NUMPY or split.skeleton.has_numpy:
        jax.block_until_ready(out)  # numpy buffers may be read until the kernel is done
    return out


def _build(impl: Callable, options: tuple) -> Callable:
    def kernel(args: tuple, leaves: list) -> Any:
        func, split, entry = _current.call
        STORE.count_compilation()
        if any(isinstance(o, PerSignature) for o in options):
            decided = _decided(impl, options, func, args, split.skeleton, leaves, measure=False)
            entry.undecided = decided is None
            options_now = decided or _defaults(options)
        else:
            options_now = options
        nodes = split.nodes
        saved = snapshot(nodes)
        try:
            with swapped(split.skeleton, nodes, leaves, func) as traced_func:
                out = impl(traced_func, *args, *options_now)
            if changed(saved) is not None:
                msg = "it changes what it reads while it runs"
                raise Rebound(msg)
        except BaseException:
            restore(saved)  # nothing the trace wrote (a tracer in a memo) outlives it
            raise
        leaves_out, treedef = jax.tree_util.tree_flatten(out)
        if all(isinstance(x, jax.Array) for x in leaves_out):
            return out
        if not all(isinstance(x, _STATIC_TYPES) for x in leaves_out):
            raise _Outputs  # a kernel would return the first call's objects
        entry.static_outputs = True
        wrapped = [x if isinstance(x, jax.Array) else _Static(x) for x in leaves_out]
        return treedef.unflatten(wrapped)

    return jax.jit(kernel)


# Non-array outputs a kernel may return as they were traced: immutable values.
_STATIC_TYPES = (jax.Array, bool, int, float, complex, str, bytes, np.generic, np.dtype)


def _is_static(x: Any) -> bool:
    return type(x) is _Static


def _unwrap(x: Any) -> Any:
    return x.value if type(x) is _Static else x


def _direct(impl: Callable, options: tuple, func: Any, args: tuple) -> Any:
    """``impl`` as is: traced by the caller's trace, or run op by op (then finished before
    returning, so that numpy buffers it reads may be reused at once)."""
    if any(isinstance(o, PerSignature) for o in options):
        try:
            split = _walk.split(func)
        except _walk.Uncached:
            split = None
        skeleton, leaves = (split.skeleton, split.leaves) if split else (None, [])
        decided = _decided(impl, options, func, args, skeleton, leaves, measure=False)
        options = decided or _defaults(options)
    out = impl(func, *args, *options)
    if at_top_level():
        jax.block_until_ready(out)
    return out


def _decided(
    impl: Callable,
    options: tuple,
    func: Any,
    args: tuple,
    skeleton: Any,
    leaves: list,
    measure: bool,
) -> tuple | None:
    """``options`` with each ``PerSignature`` option decided for this call's signature (the
    key and the shapes and dtypes of the arrays), measured on this call's arguments if
    ``measure``; ``None`` while one is undecided."""
    leaves = [*jax.tree_util.tree_leaves(args), *leaves]
    try:
        shapes = tuple([(x.shape, x.dtype) for x in leaves])
    except AttributeError:  # Python numbers under an outer trace
        shapes = tuple((np.shape(x), type(x)) for x in leaves)
    signature = ((impl, options, skeleton), shapes)
    decided = []
    for option in options:
        if isinstance(option, PerSignature):
            value = option.decide(signature)
            if value is None and measure:

                def run(value: Any, option: PerSignature = option) -> Any:
                    chosen = tuple(value if o is option else o for o in options)
                    return call(impl, chosen, func, args)

                option.measure(signature, run)
                value = option.decide(signature)
            if value is None:
                return None
            option = value
        decided.append(option)
    return tuple(decided)


def _defaults(options: tuple) -> tuple:
    return tuple(o.default if isinstance(o, PerSignature) else o for o in options)


_warned: set = set()


def _uncached(
    reason: str, func: Any, impl: Callable, options: tuple, args: tuple, keyed: Any = None
) -> Any:
    STORE.count_uncached(reason)
    source = _source(func)
    if (source, reason) not in _warned and len(_warned) < 4096:
        _warned.add((source, reason))
        why = WHY.get(reason, reason)
        if reason == "recompiles":
            why = _why_recompiles(*keyed)
        msg = (
            f"jaxhvp runs {_describe(source)} uncached, op by op (slow): {why}. Pass the "
            "arrays and numbers it reads as inputs (or in args), or call with jit=False "
            "to choose op by op explicitly."
        )
        warnings.warn(msg, stacklevel=4)
    return _direct(impl, options, func, args)


def _warn_if_narrowed(leaves: list, func: Any) -> None:
    """Says once when a numpy array the function reads reaches the kernel in a narrower
    dtype (float64 as float32 without x64), as ``jax.jit`` passes arguments."""
    for leaf in leaves:
        if type(leaf) is np.ndarray:
            canonical = jax.dtypes.canonicalize_dtype(leaf.dtype)
            if canonical != leaf.dtype and (_source(func), "narrowed") not in _warned:
                _warned.add((_source(func), "narrowed"))
                msg = (
                    f"jaxhvp passes the {leaf.dtype} numpy array of shape {leaf.shape} that "
                    f"{_describe(_source(func))} reads to its kernel as {canonical}, as jax.jit "
                    "passes arguments (JAX's x64 mode is off): numpy operations on it then "
                    f"run in {canonical}. Convert it with jnp.asarray, enable x64, or call "
                    "with jit=False."
                )
                warnings.warn(msg, stacklevel=5)
                return


def _why_recompiles(key: Any, family: Any) -> str:
    last = STORE.last_key.get(family)
    change = last and _values.describe_change(last[2].tree, key[2].tree)
    return (
        f"{PER_SOURCE} kernels were compiled for it already, because "
        f"{change or 'a Python value it reads'} changes from call to call and each value is "
        "a new kernel; pass numbers that change as arrays (jnp.asarray(...))"
    )


def _source(func: Any) -> Any:
    """Where ``func``'s code was written: kernels are counted per source location. For a
    tuple of functions (an objective with its gradient), the first one's."""
    if type(func) is tuple and func:
        func = func[0]
    user_function = getattr(func, "_user_function", None)  # a jaxhvp operator: its model
    if callable(user_function) and user_function() is not None:
        func = user_function()
    while isinstance(func, functools.partial):
        func = func.func
    func = getattr(func, "__func__", func)
    # A function has code; a callable object has its class's __call__.
    code = getattr(func, "__code__", None)
    if code is None and callable(func):
        code = getattr(type(func).__call__, "__code__", None)
    if code is None:  # a builtin or compiled callable: counted per type
        return (repr(type(func))[:60],)
    return (code.co_filename, code.co_firstlineno, code.co_name)


def _describe(source: Any) -> str:
    return source[0] if len(source) == 1 else f"{source[2]} at {source[0]}:{source[1]}"
