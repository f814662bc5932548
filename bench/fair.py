"""The fair protocol: the rows of one comparison timed in one process, in blocks, by rounds.

Rows timed each in its own process drift apart by more than the differences they are meant
to show: a fresh process's allocator state decides whether XLA:CPU's temporaries are taken
from memory the process already holds or mapped anew (and page-faulted, zero-filled) on
every call (``python -m bench --diagnostics`` writes both times and the page faults per
call side by side; ``python -m bench allocator`` isolates the mechanism). So every
comparison a reader would make is timed here, on the same arrays and threads in one
process:

* warm-up: each row is called until compiled (``torch.compile`` and ``mode="auto"``
  included), then ``warmup`` more times;
* rounds: each round runs every row once, in an order rotating by one per round, as a
  block of ``block`` calls whose first (repeated for at least ``settle_s``) is untimed.
  The untimed calls absorb what the previous block leaves behind (the other framework's
  worker threads still spinning after their parallel region, caches holding its data);
  timing call by call instead inflated both frameworks' times by up to 50% on 2 cores;
* a row's time is the median over rounds of its block medians; a ratio between two rows is
  the median of the per-round ratios, with their quartiles as the spread.

Minor page faults per call (``getrusage``) are recorded with each block: the measured
reason behind the drift above.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .measure import cpu_sample, others_cores, sync

BLOCK = 4  # calls per row per round, the first untimed
WARMUP = 2  # calls per row after the first (compiling) one, before the rounds
SETTLE_S = 0.01  # a block's untimed calls last at least this long


def settle(call: Callable[[], Any], settle_s: float) -> None:
    """Untimed calls, at least one, until ``settle_s`` has passed: what the previous block
    left behind (another framework's threads spinning after their parallel region, for a
    few milliseconds) settles meanwhile."""
    start = time.perf_counter()
    sync(call())
    while time.perf_counter() - start < settle_s:
        sync(call())


@dataclasses.dataclass
class Timing:
    """One row's block medians, one per round (seconds per call), and its page faults."""

    rounds: list[float]
    faults: list[float]  # minor page faults per timed call, one per round
    # cores other processes used on average while the rows were timed (NaN: not measured)
    others_cores: float = math.nan

    @property
    def median_s(self) -> float:
        return statistics.median(self.rounds)

    def percentile_s(self, q: float) -> float:
        return float(np.percentile(self.rounds, q))

    @property
    def faults_per_call(self) -> float:
        return statistics.median(self.faults)


def time_rows(
    calls: dict[str, Callable[[], Any]],
    target_s: float,
    min_rounds: int,
    block: int = BLOCK,
    warmup: int = WARMUP,
    max_rounds: int = 200,
    settle_s: float = SETTLE_S,
) -> dict[str, Timing]:
    """Each call timed by the protocol above: at least ``min_rounds`` rounds, more until
    the timed calls add up to ``target_s`` per row (at most ``max_rounds``). The garbage
    collector is paused during the rounds."""
    if block < 2:
        raise ValueError(f"block must be at least 2 (one untimed call), got {block}")
    names = list(calls)
    for name in names:
        for _ in range(1 + warmup):
            sync(calls[name]())

    def one_block(name: str) -> tuple[float, float, float]:
        call = calls[name]
        settle(call, settle_s)
        times = []
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(block - 1):
            start = time.perf_counter()
            sync(call())
            times.append(time.perf_counter() - start)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        return statistics.median(times), faults / (block - 1), sum(times)

    return _rotating_rounds(names, one_block, target_s, min_rounds, max_rounds)


def _rotating_rounds(
    names: list[str],
    measure: Callable[[str], tuple[float, float, float]],
    target_s: float,
    min_rounds: int,
    max_rounds: int,
) -> dict[str, Timing]:
    """Rounds of ``measure(name)`` -> (round time, faults per call, seconds spent) over every
    row, in an order rotating by one row per round, with the garbage collector paused: at
    least ``min_rounds``, more until each row has spent ``target_s`` (at most ``max_rounds``)."""
    timings = {name: Timing([], []) for name in names}
    spent = dict.fromkeys(names, 0.0)
    gc.collect()
    gc.disable()
    try:
        rounds = 0
        while rounds < max_rounds and (rounds < min_rounds or min(spent.values()) < target_s):
            shift = rounds % len(names)
            for name in names[shift:] + names[:shift]:
                seconds, faults, used = measure(name)
                timings[name].rounds.append(seconds)
                timings[name].faults.append(faults)
                spent[name] += used
            rounds += 1
    finally:
        gc.enable()
    return timings


def time_rounds(
    calls: dict[str, Callable[[], Any]],
    target_s: float,
    min_rounds: int,
    max_rounds: int = 100,
    pause_s: float = SETTLE_S,
) -> dict[str, Timing]:
    """The protocol for calls that each take far longer than a framework's threads spin
    after their parallel region (whole solves, spectrum estimates), where an untimed call
    per block would double the cost: every row called once per round, after a pause of
    ``pause_s``, in an order rotating by one per round; at least ``min_rounds`` rounds, more
    until each row's timed calls add up to ``target_s`` (at most ``max_rounds``). Each
    round's one time stands for its block median, so :func:`ratio` and the medians read
    the same. The first calls (compilation) are the caller's: call each row once before."""

    def one_call(name: str) -> tuple[float, float, float]:
        time.sleep(pause_s)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        sync(calls[name]())
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        return seconds, float(faults), seconds

    return _rotating_rounds(list(calls), one_call, target_s, min_rounds, max_rounds)


def ratio(numerator: Timing, denominator: Timing) -> tuple[float, float, float]:
    """``(median, 25th, 75th percentile)`` of the per-round ratios of two rows timed
    together by :func:`time_rows`."""
    ratios = np.asarray(numerator.rounds) / np.asarray(denominator.rounds)
    return float(np.median(ratios)), *(float(np.percentile(ratios, q)) for q in (25, 75))


def time_problem(
    problem: Any, rows: list[dict[str, Any]], target_s: float, min_rounds: int
) -> dict[int, dict[str, Timing]]:
    """The suite's checked rows of one problem timed together, one group per ``k`` (the
    vectors or probes per call), and the rows updated in place: ``median_s``, ``p20_s``,
    ``p80_s`` and ``per_vector_s`` from the rounds, ``faults_per_call``, ``timing``. Rows
    that failed their check, and ``slow`` ones (seconds per call), keep their own timing."""
    from . import impls

    registry = impls.by_name()
    groups: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok" and not registry[row["base_impl"]].slow:
            groups.setdefault(row["k"], []).append(row)
    timings = {}
    for k, group in groups.items():
        case = impls.Case(problem, k)
        calls = {row["impl"]: registry[row["base_impl"]].factory(case) for row in group}
        before = cpu_sample()
        timings[k] = time_rows(calls, target_s, min_rounds)
        others = others_cores(before, cpu_sample())
        for timing in timings[k].values():
            timing.others_cores = others
        for row in group:
            timing = timings[k][row["impl"]]
            row.update(
                isolated_median_s=row["median_s"],
                isolated_faults_per_call=row["faults_per_call"],
                median_s=timing.median_s,
                p20_s=timing.percentile_s(20),
                p80_s=timing.percentile_s(80),
                per_vector_s=timing.median_s / k,
                reps=len(timing.rounds) * (BLOCK - 1),
                faults_per_call=timing.faults_per_call,
                others_cores=timing.others_cores,
                timing="fair",
            )
    return timings
