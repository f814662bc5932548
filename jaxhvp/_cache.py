"""The compiled-kernel cache behind eager calls: the one piece of global state in jaxhvp.

An eager call is keyed by what decides its traced program: the entry point, its options and
the function's skeleton (``_closure.split``). Each key owns one ``jax.jit`` kernel taking
the arguments and the function's array leaves; ``jax.jit`` then dispatches on the arguments'
structure, shapes and dtypes, compiling once per signature.
Under an outer trace (the user's ``jit``, ``vmap``, ``grad``) nothing is cached: the caller
just traces.
"""

from __future__ import annotations

import collections
import functools
import itertools
import threading
import warnings
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import numpy as np

from . import _closure
from ._errors import HVPError

try:  # JAX has no public "am I being traced?"; without it every call traces (still correct).
    from jax._src import core as _core

    _TRACE, _AXIS_ENV = _core.trace_state_strong_ref, _core.axis_env_state
    _EVAL_TRACE, _TOP_AXIS_ENV = _core.eval_trace, _core.top_axis_env

    def _at_top_level() -> bool:
        """``jax._src.core.trace_ctx.is_top_level()``, read directly: it is on the hot path."""
        return _TRACE.value is _EVAL_TRACE and _AXIS_ENV.value is _TOP_AXIS_ENV

except (ImportError, AttributeError):  # pragma: no cover

    def _at_top_level() -> bool:
        return False


DEFAULT_MAXSIZE = 256
RECOMPILE_WARNING_AT = 16


class CacheInfo(NamedTuple):
    """Counters of the kernel cache, as ``functools.lru_cache`` reports them.

    ``compilations`` counts traces of kernels: one per new function skeleton, argument
    structure, shape or dtype.
    """

    hits: int
    misses: int
    compilations: int
    size: int
    maxsize: int


class _Entry:
    __slots__ = ("kernel", "pinned", "referenced")

    def __init__(self, kernel: Callable, pinned: list) -> None:
        self.kernel = kernel
        self.pinned = pinned  # objects whose ids the key holds: kept alive with the entry
        self.referenced = False


class _KernelCache:
    """A bounded map from call keys to jit-compiled kernels, with counters; thread-safe.

    Lookups take no lock (``call`` reads ``entries`` directly): a dict read is atomic, and a
    hit only sets its entry's reference bit and ticks ``hits``, an atomic counter. Inserts
    and evictions take the lock. Eviction is CLOCK (second chance): an approximation of
    least-recently-used that costs nothing on hits.
    """

    def __init__(self, maxsize: int) -> None:
        self._lock = threading.Lock()
        self.entries: dict[Any, _Entry] = {}  # in insertion order: the clock's hand is the front
        self._misses_by_source: collections.Counter = collections.Counter()
        self.hits = itertools.count()
        self.maxsize = maxsize
        self.misses = self.compilations = 0

    def insert(self, key: Any, build: Callable[[], Callable], pinned: list, source: Any):
        with self._lock:
            entry = self.entries.get(key)
            if entry is not None:  # another thread built it meanwhile
                next(self.hits)
                return entry.kernel
            self.misses += 1
            if len(self._misses_by_source) >= 4 * self.maxsize:  # bound the bookkeeping too
                self._misses_by_source.clear()
            self._misses_by_source[source] += 1
            repeated = self._misses_by_source[source]
            entry = self.entries[key] = _Entry(build(), pinned)
            self._evict()
        if repeated == RECOMPILE_WARNING_AT:
            _warn_recompiles(source, repeated)
        return entry.kernel

    def replace(self, key: Any, kernel: Callable) -> None:
        with self._lock:
            entry = self.entries.get(key)
            if entry is not None:
                entry.kernel = kernel

    def _evict(self) -> None:
        while len(self.entries) > self.maxsize:
            oldest = next(iter(self.entries))
            entry = self.entries.pop(oldest)
            if entry.referenced:  # used since the hand last passed: a second chance
                entry.referenced = False
                self.entries[oldest] = entry

    def count_compilation(self) -> None:
        with self._lock:
            self.compilations += 1

    def info(self) -> CacheInfo:
        with self._lock:
            hits = int(repr(self.hits)[len("count(") : -1])  # read without advancing
            return CacheInfo(hits, self.misses, self.compilations, len(self.entries), self.maxsize)

    def clear(self, maxsize: int | None) -> None:
        with self._lock:
            self.entries.clear()
            self._misses_by_source.clear()
            self.hits = itertools.count()
            self.misses = self.compilations = 0
            if maxsize is not None:
                self.maxsize = maxsize
                self._evict()


_CACHE = _KernelCache(DEFAULT_MAXSIZE)
_current = threading.local()  # templates of the call in flight on this thread
_CONCRETE_ARRAY_TYPES = _closure._CONCRETE_ARRAY_TYPES  # a fast first test


def cache_info() -> CacheInfo:
    """Hits, misses, compilations and size of the kernel cache behind eager calls.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> jaxhvp.cache_clear()
      >>> for _ in range(3):
      ...     _ = jaxhvp.hvp(lambda x: (x**3).sum(), jnp.ones(3), jnp.ones(3))
      >>> info = jaxhvp.cache_info()
      >>> info.hits, info.misses, info.compilations
      (2, 1, 1)
    """
    return _CACHE.info()


def cache_clear(maxsize: int | None = None) -> None:
    """Empties the kernel cache and resets its counters; optionally sets its bound.

    Args:
      maxsize: the most kernels kept (least recently used go first); default unchanged
        (initially 256).
    """
    if maxsize is not None and (not isinstance(maxsize, int) or maxsize < 1):
        msg = f"maxsize must be a positive int, but got {maxsize!r}."
        raise ValueError(msg)
    _CACHE.clear(maxsize)
    _closure.forget()


class PerSignature:
    """A static option decided once per signature of a call, when its kernel is traced.

    The signature is the call's key and the shapes and dtypes of its arrays. ``decide``
    returns the option's value for it; while tracing an eager call it may instead raise
    :class:`Undecided` to make the decision on the call's concrete values first.
    """

    def decide(self, signature: Hashable, eager: bool) -> Any:
        raise NotImplementedError


class Undecided(Exception):
    """Raised while tracing by ``PerSignature.decide``: ``choose(run)`` decides, where
    ``run(value)`` evaluates the call eagerly with ``value`` in place of ``option``; the
    call is then retried."""

    def __init__(self, option: PerSignature, choose: Callable[[Callable], None]) -> None:
        super().__init__(option)
        self.option, self.choose = option, choose


def call(impl: Callable, options: tuple, func: Callable, args: tuple, jit: bool = True) -> Any:
    """``impl(func, *args, *options)``, through a cached jit-compiled kernel when eager.

    ``impl`` must be traceable and ``options`` a hashable tuple of its static arguments.
    Under an outer trace, with ``jit=False``, or when some argument leaf is not an array
    (``impl`` then raises the proper error), ``impl`` is simply called. This is the hot path
    of every eager call.
    """
    if not (jit and is_eager(args)):
        return _call_directly(impl, options, func, args)
    split = _closure.split(func)
    if split is None:  # too much to walk: uncached, so that nothing it reads can be stale
        _warn_uncached(func)
        return _call_directly(impl, options, func, args)
    skeleton, fn_leaves, templates, pinned = split
    key = (impl, options, skeleton)
    entry = _CACHE.entries.get(key)
    if entry is not None:  # a hit, lock-free: see _KernelCache
        entry.referenced = True
        next(_CACHE.hits)
        kernel = entry.kernel
    else:
        kernel = _CACHE.insert(key, functools.partial(_build, key), pinned, _source(func))
    _current.templates = templates
    try:
        return kernel(args, fn_leaves)
    except Undecided as undecided:
        option = undecided.option

        def run(value: Any) -> Any:
            return call(impl, tuple(value if o is option else o for o in options), func, args)

        undecided.choose(run)
        # A jax.jit whose trace raised never takes its fast C++ path again: start afresh.
        _CACHE.replace(key, _build(key))
        return call(impl, options, func, args)
    except (HVPError, TypeError) as error:
        # Raised while tracing: drop the note jax.jit adds about its own frames, so the
        # error reads as it does eagerly.
        notes = getattr(error, "__notes__", [])
        notes[:] = [n for n in notes if "JAX has removed its internal frames" not in n]
        raise
    finally:
        _current.templates = None


def _call_directly(impl: Callable, options: tuple, func: Callable, args: tuple) -> Any:
    """``impl`` as is: traced by the caller's trace, or run op by op."""
    if _deferred(options):
        split = _closure.split(func)
        skeleton, fn_leaves = (split[0], split[1]) if split else (None, [])
        leaves = [*jax.tree_util.tree_leaves(args), *fn_leaves]
        options = _decide((impl, options, skeleton), leaves, eager=False)
    return impl(func, *args, *options)


def is_eager(args: tuple) -> bool:
    """Whether a call with these arguments runs at top level on concrete arrays."""
    if not _at_top_level():
        return False
    for arg in args:
        if type(arg) not in _CONCRETE_ARRAY_TYPES:
            leaves = jax.tree_util.tree_leaves(args)
            return bool(leaves) and all(map(_closure.is_array, leaves))
    return bool(args)


def _build(key: tuple) -> Callable:
    impl, _, skeleton = key

    def kernel(args: tuple, fn_leaves: list) -> Any:
        func = _closure.rebuild(skeleton, fn_leaves, _current.templates)
        options = key[1]
        if _deferred(options):
            options = _decide(key, [*jax.tree_util.tree_leaves(args), *fn_leaves], eager=True)
        _CACHE.count_compilation()
        return impl(func, *args, *options)

    return jax.jit(kernel)


def _deferred(options: tuple) -> bool:
    return any(isinstance(option, PerSignature) for option in options)


def _decide(key: tuple, leaves: list, eager: bool) -> tuple:
    """The call's options, with each ``PerSignature`` option decided."""
    options = key[1]
    signature = (key, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves))
    return tuple(o.decide(signature, eager) if isinstance(o, PerSignature) else o for o in options)


def _source(func: Callable) -> Any:
    """Where ``func``'s code was written: recompilations are counted per source location."""
    while isinstance(func, functools.partial):
        func = func.func
    # A function or bound method has code; a callable object has its class's __call__.
    code = getattr(func, "__code__", None) or getattr(type(func).__call__, "__code__", None)
    if code is None:  # a builtin or compiled callable: counted per object
        return id(func), repr(func)[:60]
    return (code.co_filename, code.co_firstlineno, code.co_name)


_warned_uncached: set = set()


def _warn_uncached(func: Callable) -> None:
    source = _source(func)
    if source in _warned_uncached:
        return
    _warned_uncached.add(source)
    msg = (
        f"jaxhvp runs {_describe(source)} uncached, op by op (slow): it reads more than "
        f"{_closure.MAX_NODES} Python values through its closures, globals, containers and "
        "objects, too many to check for changes at every call. Pass large structures to it "
        "as inputs, or call with jit=False to choose op by op explicitly."
    )
    warnings.warn(msg, stacklevel=4)


def _describe(source: Any) -> str:
    return source[1] if len(source) == 2 else f"{source[2]} at {source[0]}:{source[1]}"


def _warn_recompiles(source: Any, count: int) -> None:
    msg = (
        f"jaxhvp compiled {count} kernels for {_describe(source)}: the Python values it closes "
        "over (numbers, strings) or the structure of its arguments keep changing, and each new "
        "value is a new kernel. Pass numbers that change as arrays (jnp.asarray(...)), or "
        "call with jit=False to skip compilation."
    )
    warnings.warn(msg, stacklevel=4)
