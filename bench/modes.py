"""``mode="auto"`` against the modes it chooses between, timed interleaved in one process.

The suite times each row in its own process, which is right for memory and cold starts but
lets memory-bound problems drift by 10-20% from one process to the next: too much to judge
a choice among modes that are often within a few percent. Here every mode of
``jaxhvp.hvp`` runs on the same arrays in the same process, one call of each per round, in
a rotating order, and the medians are compared.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax

import jaxhvp

from . import problems

MODES = ("fwd-rev", "rev-rev", "rev-fwd")
AUTO = "auto"


def compare(problem: problems.Problem, target_s: float, min_rounds: int) -> dict[str, Any]:
    """Median seconds per call of each mode and of auto, and auto over the best mode."""
    view = problems.jax_view(problem)
    names = [*MODES, AUTO]

    def call(mode: str) -> None:
        jax.block_until_ready(jaxhvp.hvp(view.func, view.params, view.v, mode=mode))

    for name in names:  # compile (auto: measure and choose), then warm up
        call(name)
        call(name)
    samples: dict[str, list[float]] = {name: [] for name in names}
    started, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - started < target_s:
        for name in names[rounds % len(names) :] + names[: rounds % len(names)]:
            start = time.perf_counter()
            call(name)
            samples[name].append(time.perf_counter() - start)
        rounds += 1
    medians = {name: statistics.median(s) for name, s in samples.items()}
    best = min(MODES, key=medians.get)
    return {
        "problem": problem.name,
        **{f"{name}_s": medians[name] for name in names},
        "best_mode": best,
        "auto_over_best": medians[AUTO] / medians[best],
        "rounds": rounds,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["problem", *(f"{m} ms" for m in MODES), "auto ms", "best mode", "auto / best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        times = [f"{r[f'{name}_s'] * 1e3:.4g}" for name in (*MODES, AUTO)]
        cells = [r["problem"], *times, r["best_mode"], f"{r['auto_over_best']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
