"""``mode="auto"``: time each AD composition once per signature, then keep the fastest.

``Fastest`` is a static option of eager calls (``_call.PerSignature``), decided for each
signature: the call's entry point, options and function skeleton, and the shapes and dtypes
of its arrays. The first eager call with that signature runs every composition a few times on
its own arguments, before any kernel is traced with the option; the choice is remembered, so
it is deterministic afterwards, and the call then runs the chosen composition's kernel.
Calls under the user's ``jax.jit`` (or with ``jit=False``) reuse an eager choice for the same
signature, or use ``"fwd-rev"``.

With several processes (``jax.distributed``), every process that runs a computation on arrays
spanning processes must run the same program: processes that chose different compositions
would pair their collectives wrongly and return silently wrong products. So a call whose
results span processes is timed by each of those processes in step (the timed calls are
computations on the same arrays, which each process runs anyway), and all of them then take
the choice of the first of them (process 0 when all take part), shared by one ``psum`` over
the call's devices: a collective, reached at the same point by each process, as the call
itself is. A call on arrays that each process holds alone is not timed in a multi-process
program: it takes ``"fwd-rev"``, the same in every process, so that no process-local choice
can reach a later call (under ``jax.jit``, say) on arrays that span processes. The one thing
the processes must then share is which signatures they decided: a signature first called on
process-local arrays by some processes only, then on arrays spanning them all, would be
measured (collectively) only by the others, which would wait for the rest.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

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
        """Decides ``signature`` from calls ``run(compose)``: the fastest composition, agreed
        by the processes the call spans; ``fwd-rev`` untimed for a process-local call in a
        multi-process program (see the module's docstring)."""
        probe = jax.block_until_ready(self.timed(run(fwd_rev)))
        devices = spanned_devices(probe)
        if devices:
            chosen = agree(fastest(self.timed, run), devices)
        elif jax.process_count() > 1:
            chosen = fwd_rev
        else:
            chosen = fastest(self.timed, run)
        with _lock:
            _choices.setdefault(signature, chosen)  # a concurrent first choice wins
            while len(_choices) > MAXSIZE:
                _choices.popitem(last=False)


def fastest(timed: Callable[[Any], Any], run: Callable[[Callable], Any]) -> Callable:
    """The fastest composition in this process, timing ``timed(run(compose))``.

    Times the compositions in ``ROUNDS`` interleaved rounds after a warm-up, so that none is
    favoured by running while the process is still warming up (memory being mapped, caches
    filling), and keeps the fastest by its best time: the default ``fwd-rev`` unless another
    is faster by more than ``MARGIN``, so that timing noise cannot trade it for an equal or
    slower mode. A composition that JAX cannot build for this function (forward mode through
    a ``jax.custom_vjp`` function: ``rev-fwd``) is left out; ``fwd-rev`` has run already.
    """
    composes = [fwd_rev] + [
        c for c in MODES.values() if c is not fwd_rev and _builds(timed, run, c)
    ]
    for compose in composes:
        for _ in range(WARM_UP):  # compile, then warm up
            jax.block_until_ready(timed(run(compose)))
    timings = dict.fromkeys(composes, float("inf"))
    for round_ in range(ROUNDS):
        first = round_ % len(composes)
        for compose in composes[first:] + composes[:first]:
            start = time.perf_counter()
            jax.block_until_ready(timed(run(compose)))
            timings[compose] = min(timings[compose], time.perf_counter() - start)
    best = min(timings, key=timings.get)
    return best if timings[best] < (1 - MARGIN) * timings[fwd_rev] else fwd_rev


def _builds(timed: Callable[[Any], Any], run: Callable[[Callable], Any], compose: Callable) -> bool:
    try:
        jax.block_until_ready(timed(run(compose)))
    except NotImplementedError:  # a missing differentiation rule, e.g. jvp of custom_vjp
        return False
    return True


def spanned_devices(tree: Any) -> tuple[jax.Device, ...]:
    """The devices of the arrays in ``tree`` that span several processes; empty if none (one
    process, or arrays that this process holds alone)."""
    devices = set()
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            devices |= leaf.sharding.device_set
    return tuple(sorted(devices, key=lambda d: (d.process_index, d.id)))


def agree(chosen: Callable, devices: Sequence[jax.Device]) -> Callable:
    """The composition chosen by the process of ``devices[0]``, in each process holding some
    of ``devices``: each process calls this with the same ``devices`` (sorted by process),
    at the same point of its program, and only ``devices[0]`` votes, in one ``psum``."""
    composes = list(MODES.values())
    vote = composes.index(chosen)
    mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    local = [
        jax.device_put(np.array([vote if device == devices[0] else 0], np.int32), device)
        for device in devices
        if device.process_index == jax.process_index()
    ]
    votes = jax.make_array_from_single_device_arrays(
        (len(devices),), NamedSharding(mesh, PartitionSpec("devices")), local
    )
    with jax.set_mesh(mesh):  # not a mesh of the caller's, whose devices may differ
        total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(votes)
    return composes[int(total.addressable_data(0))]


PRODUCT = Fastest(timed=lambda result: result)
OPERATOR = Fastest(timed=lambda op: op.mv(op.grad))


def _forget() -> None:
    with _lock:
        _choices.clear()


_call._on_clear.append(_forget)
