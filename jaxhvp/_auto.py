"""``mode="auto"``: time each AD composition once per signature, then keep the fastest.

The choice is keyed by the entry point, its options, the function's skeleton and the
arguments' structure, shapes and dtypes. It is made by eager calls (the first call with a new
signature runs every composition a few times) and remembered, so it is deterministic
afterwards and also used by calls under the user's ``jax.jit`` with the same signature. A
traced call with no eager choice to follow uses ``"fwd-rev"``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from . import _cache, _closure
from ._modes import MODES, fwd_rev

REPEATS = 5
MARGIN = 0.1
MAXSIZE = 1024

_lock = threading.Lock()
_choices: collections.OrderedDict = collections.OrderedDict()
_recent: dict = {}  # (entry, options, id(func), structure, shapes) -> (func, composition)


def choose(entry: str, options: tuple, func: Callable, args: Any, run: Callable) -> Callable:
    """The composition for this call; ``run(compose)`` evaluates the call with one of them."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    recent_key = (entry, options, id(func), treedef, _avals(leaves))
    recent = _recent.get(recent_key)
    if recent is not None and recent[0] is func:  # the same function again: no walk needed
        return recent[1]
    key = _signature(entry, options, func, args)
    with _lock:
        chosen = _choices.get(key)
    if chosen is None and _cache.is_eager(args):
        chosen = _measure(key, run)
    if chosen is None:
        return fwd_rev
    if len(_recent) >= MAXSIZE:
        _recent.clear()
    _recent[recent_key] = (func, chosen)  # holds func: its id stays its own while here
    return chosen


def _measure(key: Any, run: Callable) -> Callable:
    """Times each composition (best of ``REPEATS`` after a warm-up) and keeps the fastest;
    the default ``fwd-rev`` unless another is faster by more than ``MARGIN``, so that timing
    noise cannot trade it for an equal or slower mode."""
    timings = {}
    for compose in MODES.values():
        jax.block_until_ready(run(compose))  # compile and warm up
        samples = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            jax.block_until_ready(run(compose))
            samples.append(time.perf_counter() - start)
        timings[compose] = min(samples)
    fastest = min(timings, key=timings.get)
    chosen = fastest if timings[fastest] < (1 - MARGIN) * timings[fwd_rev] else fwd_rev
    with _lock:
        chosen = _choices.setdefault(key, chosen)  # a concurrent first choice wins
        while len(_choices) > MAXSIZE:
            _choices.popitem(last=False)
    return chosen


def _signature(entry: str, options: tuple, func: Callable, args: Any) -> Any:
    skeleton, fn_leaves, _, _ = _closure.split(func)
    leaves, treedef = jax.tree_util.tree_flatten(args)
    return entry, options, treedef, skeleton, _avals([*leaves, *fn_leaves])


def _avals(leaves: list) -> tuple:
    return tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves)
