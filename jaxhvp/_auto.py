"""``mode="auto"``: time each AD composition once per signature, then keep the fastest.

``Fastest`` is a static option of the kernel cache (``_cache.PerSignature``), decided when a
kernel is traced for a new signature: the call's entry point, options and function skeleton,
and the shapes and dtypes of its arrays. The first eager call with that signature runs every
composition a few times on its own arguments; the choice is remembered, so it is
deterministic afterwards and costs nothing per call (``jax.jit`` dispatches to the kernel
traced with it). Calls under the user's ``jax.jit`` (or with ``jit=False``) reuse an eager
choice for the same signature, or use ``"fwd-rev"``.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import jax

from . import _cache
from ._modes import MODES, fwd_rev

REPEATS = 5
MARGIN = 0.1
MAXSIZE = 1024

_lock = threading.Lock()
_choices: collections.OrderedDict = collections.OrderedDict()  # signature -> composition


class Fastest(_cache.PerSignature):
    """The fastest composition for each signature.

    Args:
      timed: what to time, given a call's result (the result itself for a product; a product
        of the operator for ``hessian_operator``).
    """

    def __init__(self, timed: Callable[[Any], Any]) -> None:
        self.timed = timed

    def decide(self, signature: Hashable, eager: bool) -> Callable:
        with _lock:
            chosen = _choices.get(signature)
        if chosen is not None:
            return chosen
        if not eager:
            return fwd_rev
        raise _cache.Undecided(self, functools.partial(self._measure, signature))

    def _measure(self, signature: Hashable, run: Callable[[Callable], Any]) -> None:
        """Times each composition (best of ``REPEATS`` after a warm-up) and keeps the fastest;
        the default ``fwd-rev`` unless another is faster by more than ``MARGIN``, so that
        timing noise cannot trade it for an equal or slower mode."""
        timings = {}
        for compose in MODES.values():
            jax.block_until_ready(self.timed(run(compose)))  # compile and warm up
            samples = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                jax.block_until_ready(self.timed(run(compose)))
                samples.append(time.perf_counter() - start)
            timings[compose] = min(samples)
        fastest = min(timings, key=timings.get)
        chosen = fastest if timings[fastest] < (1 - MARGIN) * timings[fwd_rev] else fwd_rev
        with _lock:
            _choices.setdefault(signature, chosen)  # a concurrent first choice wins
            while len(_choices) > MAXSIZE:
                _choices.popitem(last=False)


PRODUCT = Fastest(timed=lambda result: result)
OPERATOR = Fastest(timed=lambda op: op.mv(op.grad))
