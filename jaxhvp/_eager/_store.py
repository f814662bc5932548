"""The bounded store of everything jaxhvp compiles, with its counters: the one piece of
global state behind eager calls.

Each entry maps a call key (entry point, options, the function's skeleton) to one
``jax.jit`` kernel, or records that the key runs uncached and why. At most ``maxsize``
entries are kept (CLOCK eviction, an approximation of least-recently-used that costs nothing
on hits), and at most ``PER_SOURCE`` kernels are ever compiled for one *family* of keys (one
entry point, one place in the user's code, one skeleton up to its Python values) until
``cache_clear``: beyond, new keys of the family run uncached, so that a value that changes at
every call (a closed-over float) costs bounded memory and no compilation per call.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

DEFAULT_MAXSIZE = 64
PER_SOURCE = 16


class CacheInfo(NamedTuple):
    """Counters of the eager-call machinery.

    Attributes:
      hits: eager calls that found their kernel.
      misses: eager calls that made a new entry (a kernel, or an uncached verdict).
      compilations: traces of kernels (one per new key, argument structure, shape or dtype).
      size: entries kept; maxsize: the most kept.
      walks: functions walked (a new function, or one no recorded guard accepted).
      guard_misses: walks of functions whose recorded guards all rejected them (something
        they read changed in kind, not just an array's value).
      uncached: eager calls run op by op instead.
      uncached_reasons: how many of those for each reason, as ``(reason, count)`` pairs.
    """

    hits: int
    misses: int
    compilations: int
    size: int
    maxsize: int
    walks: int = 0
    guard_misses: int = 0
    uncached: int = 0
    uncached_reasons: tuple = ()


class Entry:
    __slots__ = ("family", "kernel", "reason", "referenced", "static_outputs", "undecided")

    def __init__(self, kernel: Callable | None, reason: str | None, family: Any) -> None:
        self.kernel = kernel  # None: runs uncached, for ``reason``
        self.reason = reason
        self.family = family
        self.referenced = False
        self.static_outputs = False  # the kernel returns non-array values (see _call)
        self.undecided = False  # traced for a signature whose mode="auto" is not measured


class Store:
    """Thread-safe: lookups read ``entries`` without the lock (a dict read is atomic)."""

    def __init__(self, maxsize: int) -> None:
        self._lock = threading.Lock()
        self.entries: dict[Any, Entry] = {}  # insertion order: the clock's hand is the front
        self.maxsize = maxsize
        self._reset()

    def _reset(self) -> None:
        self.hits = itertools.count()
        self.misses = self.compilations = self.uncached = 0
        self.reasons: collections.Counter = collections.Counter()
        self._kernels_by_family: collections.Counter = collections.Counter()
        self.last_key: dict[Any, Any] = {}  # family -> its latest key
        self._verdicts: dict[Any, str] = {}  # family -> why its keys run uncached

    def insert(self, key: Any, family: Any, build: Callable[[], Callable], reason: str | None):
        """The entry of ``key``, made now: a kernel from ``build``, or uncached for
        ``reason`` (or because ``family`` has ``PER_SOURCE`` kernels already)."""
        with self._lock:
            entry = self.entries.get(key)
            if entry is not None:  # another thread made it meanwhile
                return entry
            self.misses += 1
            reason = reason or self._verdicts.get(family)
            if reason is None and self._kernels_by_family[family] >= PER_SOURCE:
                reason = "recompiles"
            if reason is None:
                if len(self._kernels_by_family) >= 4 * self.maxsize:  # bound bookkeeping
                    self._kernels_by_family.clear()
                    self.last_key.clear()
                self._kernels_by_family[family] += 1
                self.last_key[family] = key
            entry = Entry(build() if reason is None else None, reason, family)
            self.entries[key] = entry
            self._evict()
            return entry

    def replace_kernel(self, entry: Entry, kernel: Callable) -> None:
        with self._lock:
            entry.kernel = kernel

    def make_uncached(self, entry: Entry, reason: str) -> None:
        """``entry`` runs uncached from now on, and so do new keys of its family: a
        function that writes what it reads does so whatever the values it reads."""
        with self._lock:
            entry.kernel, entry.reason = None, reason
            if len(self._verdicts) >= 4 * self.maxsize:
                self._verdicts.clear()
            self._verdicts[entry.family] = reason

    def count_uncached(self, reason: str) -> None:
        with self._lock:
            self.uncached += 1
            self.reasons[reason] += 1

    def count_compilation(self) -> None:
        with self._lock:
            self.compilations += 1

    def _evict(self) -> None:
        while len(self.entries) > self.maxsize:
            oldest = next(iter(self.entries))
            entry = self.entries.pop(oldest)
            if entry.referenced:  # used since the hand last passed: a second chance
                entry.referenced = False
                self.entries[oldest] = entry

    def info(self, walks: int, guard_misses: int) -> CacheInfo:
        with self._lock:
            hits = int(repr(self.hits)[len("count(") : -1])  # read without advancing
            reasons = tuple(sorted(self.reasons.items()))
            return CacheInfo(
                hits,
                self.misses,
                self.compilations,
                len(self.entries),
                self.maxsize,
                walks,
                guard_misses,
                self.uncached,
                reasons,
            )

    def clear(self, maxsize: int | None) -> None:
        with self._lock:
            self.entries.clear()
            self._reset()
            if maxsize is not None:
                self.maxsize = maxsize
