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

from . import _cache, _closure
from ._modes import MODES, fwd_rev

REPEATS = 3
MAXSIZE = 1024

_lock = threading.Lock()
_choices: collections.OrderedDict = collections.OrderedDict()


def choose(entry: str, options: tuple, func: Callable, args: Any, run: Callable) -> Callable:
    """The composition for this call; ``run(compose)`` evaluates the call with one of them."""
    key = _signature(entry, options, func, args)
    with _lock:
        chosen = _choices.get(key)
    if chosen is not None or not _cache.is_eager(args):
        return chosen or fwd_rev
    timings = {}
    for compose in MODES.values():
        jax.block_until_ready(run(compose))  # compile and warm up
        samples = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            jax.block_until_ready(run(compose))
            samples.append(time.perf_counter() - start)
        timings[compose] = sorted(samples)[len(samples) // 2]
    chosen = min(timings, key=timings.get)
    with _lock:
        chosen = _choices.setdefault(key, chosen)  # a concurrent first choice wins
        while len(_choices) > MAXSIZE:
            _choices.popitem(last=False)
    return chosen


def _signature(entry: str, options: tuple, func: Callable, args: Any) -> Any:
    try:
        skeleton, fn_leaves, _, _ = _closure.split(func)
    except _closure.TooComplex:
        skeleton, fn_leaves = ("id", id(func)), []
    leaves, treedef = jax.tree_util.tree_flatten(args)
    avals = tuple((jax.numpy.shape(x), jax.numpy.result_type(x)) for x in [*leaves, *fn_leaves])
    return entry, options, treedef, skeleton, avals
