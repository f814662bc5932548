"""``mode="auto"``: time each AD composition once per signature, then keep the fastest.

``Fastest`` is a static option of eager calls (``_call.PerSignature``), decided for each
signature: the call's entry point, options and function skeleton, and the shapes and dtypes
of its arrays. The first eager call with that signature runs every composition a few times on
its own arguments, before any kernel is traced with the option; the choice is remembered, so
it is deterministic afterwards, and the call then runs the chosen composition's kernel.
Calls under the user's ``jax.jit`` (or with ``jit=False``) reuse an eager choice for the same
signature, or use ``"fwd-rev"``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import jax

from .._modes import MODES, fwd_rev
from . import _call

WARM_UP = 2
ROUNDS = 5
MARGIN = 0.1
MAXSIZE = 1024

_lock = threading.Lock()
_choices: collections.OrderedDict = collections.OrderedDict()  # signature -> composition


class Fastest(_call.PerSignature):
    """The fastest composition for each signature.

    Args:
      timed: what to time, given a call's result (the result itself for a product; a product
        of the operator for ``hessian_operator``).
    """

    default = staticmethod(fwd_rev)

    def __init__(self, timed: Callable[[Any], Any]) -> None:
        self.timed = timed

    def decide(self, signature: Hashable) -> Callable | None:
        with _lock:
            return _choices.get(signature)

    def measure(self, signature: Hashable, run: Callable[[Callable], Any]) -> None:
        """Times the compositions in ``ROUNDS`` interleaved rounds after a warm-up, so that
        none is favoured by running while the process is still warming up (memory being
        mapped, caches filling), and keeps the fastest by its best time: the default
        ``fwd-rev`` unless another is faster by more than ``MARGIN``, so that timing noise
        cannot trade it for an equal or slower mode."""
        composes = list(MODES.values())
        for compose in composes:
            for _ in range(WARM_UP):  # compile, then warm up
                jax.block_until_ready(self.timed(run(compose)))
        timings = dict.fromkeys(composes, float("inf"))
        for round_ in range(ROUNDS):
            first = round_ % len(composes)
            for compose in composes[first:] + composes[:first]:
                start = time.perf_counter()
                jax.block_until_ready(self.timed(run(compose)))
                timings[compose] = min(timings[compose], time.perf_counter() - start)
        fastest = min(timings, key=timings.get)
        chosen = fastest if timings[fastest] < (1 - MARGIN) * timings[fwd_rev] else fwd_rev
        with _lock:
            _choices.setdefault(signature, chosen)  # a concurrent first choice wins
            while len(_choices) > MAXSIZE:
                _choices.popitem(last=False)


PRODUCT = Fastest(timed=lambda result: result)
OPERATOR = Fastest(timed=lambda op: op.mv(op.grad))


def _forget() -> None:
    with _lock:
        _choices.clear()


_call._on_clear.append(_forget)
