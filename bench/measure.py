"""The protocol: correctness first, then first-call latency, warm-up, timed repetitions.

:func:`run_one` measures one (problem, implementation, k) in the current process;
:func:`run_isolated` does the same in a fresh ``python -m bench._worker`` process, time-boxed,
and is the only way peak memory is measured:

* CPU: growth of the process's resident set size (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``, else ``ru_maxrss``) over a baseline, in MiB. ``peak_mem_mb``
  is the working memory of the timed calls: the baseline is taken after the first call and
  the warm-up, once freed memory has been handed back to the system (``malloc_trim``), so
  compiled code and caches are not counted. ``first_call_mem_mb`` is the growth during the
  first call, from a baseline taken after the imports, the data and the set-up: it includes
  tracing and compilation.
* GPU: ``torch.cuda.max_memory_allocated`` for torch, JAX's ``peak_bytes_in_use`` for JAX
  (which cannot be reset: there both columns count from the first baseline).

Rows measured in a shared process report NaN memory, never an estimate.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch

import jaxhvp

from . import problems
from .impls import Case, Impl

TOLERANCE = 1e-3  # max_rel_err above this (float32) marks a row wrong; it is not timed
MIB = 2**20


@dataclasses.dataclass
class Settings:
    warmup: int = 2  # calls after the first one, before timing
    min_reps: int = 5
    max_reps: int = 200
    target_s: float = 1.0  # keep repeating until the timed calls add up to this
    timeout_s: float = 300.0  # per isolated process
    threads: int = 1


# --- helpers ---------------------------------------------------------------------------------


def set_torch_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def sync(out: Any) -> Any:
    """Waits for the result: JAX dispatches asynchronously, and so does torch on a GPU."""
    jax.block_until_ready([x for x in _leaves(out) if isinstance(x, jax.Array)])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out


def _leaves(out: Any) -> list:
    if isinstance(out, dict):
        return [y for x in out.values() for y in _leaves(x)]
    if isinstance(out, (list, tuple)):
        return [y for x in out for y in _leaves(x)]
    return [out]


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def named(out: Any, names: list[str]) -> dict[str, np.ndarray]:
    """An implementation's result as ``{parameter name: numpy array}``; a list of k results
    (a loop) is stacked on a leading axis."""
    if isinstance(out, list):
        items = [named(o, names) for o in out]
        return {n: np.stack([item[n] for item in items]) for n in names}
    if isinstance(out, dict):
        return {n: _numpy(out[n]) for n in names}
    if isinstance(out, tuple):
        return dict(zip(names, map(_numpy, out)))
    return {names[0]: _numpy(out)}


def reference_for(impl: Impl, k: int, refs: dict) -> dict[str, np.ndarray]:
    if impl.reference is not None:
        return refs[impl.reference]
    if impl.kind == "grad":
        return refs["grad"]
    if impl.kind == "batched":
        return {n: r[:k] for n, r in refs["hvp"].items()}
    return {n: r[0] for n, r in refs["hvp"].items()}


def time_calls(call: Any, settings: Settings) -> np.ndarray:
    """Seconds per call, each call waited on; at least ``min_reps``, and more until the total
    reaches ``target_s`` (at most ``max_reps``). The garbage collector is paused meanwhile."""
    times: list[float] = []
    gc.collect()
    gc.disable()
    try:
        while len(times) < settings.max_reps and (
            len(times) < settings.min_reps or sum(times) < settings.target_s
        ):
            start = time.perf_counter()
            sync(call())
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return np.asarray(times)


class PeakMemory:
    """Peak memory growth from :meth:`reset` on; see the module docstring."""

    def __init__(self, framework: str) -> None:
        self.framework = framework
        self.gpu = (
            torch.cuda.is_available() if framework == "torch" else (jax.default_backend() != "cpu")
        )

    def reset(self) -> None:
        gc.collect()
        _malloc_trim()
        if self.gpu and self.framework == "torch":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif self.gpu:
            self.base = (jax.devices()[0].memory_stats() or {}).get("bytes_in_use", 0)
        else:
            self.hwm = _reset_hwm()
            self.base = _rss_bytes() if self.hwm else _maxrss_bytes()

    def peak_mb(self) -> float:
        if self.gpu and self.framework == "torch":
            peak = torch.cuda.max_memory_allocated()
        elif self.gpu:
            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" not in stats:
                return math.nan
            peak = stats["peak_bytes_in_use"]
        else:
            peak = _status_bytes("VmHWM") if self.hwm else _maxrss_bytes()
        return max(peak - self.base, 0) / MIB

    @staticmethod
    def method() -> str:
        if torch.cuda.is_available() or jax.default_backend() != "cpu":
            return "GPU: torch.cuda.max_memory_allocated / JAX peak_bytes_in_use, minus baseline"
        if _reset_hwm():
            return "CPU: process peak RSS (VmHWM, reset via /proc/self/clear_refs) minus baseline"
        return "CPU: process peak RSS (ru_maxrss) minus baseline"


def _malloc_trim() -> None:
    """Hands freed heap memory back to the system (glibc), so that the next peak is real."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# --- quiet machine --------------------------------------------------------------------------


def cpu_sample() -> tuple[float, float, float] | None:
    """(wall s, CPU s used by the whole machine, CPU s used by this process), or None where
    ``/proc/stat`` does not exist."""
    try:
        line = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system


def others_cores(before: tuple | None, after: tuple | None) -> float:
    """Cores used on average by other processes between two :func:`cpu_sample` s."""
    if before is None or after is None:
        return math.nan
    wall = max(after[0] - before[0], 1e-9)
    return max((after[1] - before[1]) - (after[2] - before[2]), 0.0) / wall


class QuietGuard:
    """Runs rows while no other process competes for the CPUs, and re-runs a row that met one.

    Benchmarks on a shared machine are at the mercy of other processes: with 2 cores, one
    other busy process slows multi-threaded torch 10-50x (each OpenMP barrier waits a
    scheduler slice for the thread that lost its core) and JAX about 2x. :func:`run_one`
    records ``others_cores``, the cores that other processes used during the warm-up and the
    timed calls: the machine's CPU time (``/proc/stat``) minus the measuring process's own.
    Before a row that follows a noisy one (and before the first) the guard waits (up to
    ``max_wait_s``, and ``budget_s`` over the whole run) until other processes use under
    ``threshold`` cores; a row during which they used more is run again (up to ``retries``
    times, while the wait budget lasts) and otherwise kept with ``noisy`` set: shown, never
    silently trusted. Without ``/proc/stat`` it does nothing.
    """

    def __init__(
        self,
        threshold: float = 0.25,
        max_wait_s: float = 30.0,
        budget_s: float = 600.0,
        retries: int = 2,
    ) -> None:
        self.threshold, self.max_wait_s, self.retries = threshold, max_wait_s, retries
        self.budget_s = budget_s  # all waits together
        self.waited_s = 0.0
        self.enabled = cpu_sample() is not None
        self.quiet = False  # was the last row measured quietly?

    def wait(self) -> bool:
        """Waits until other processes are quiet; False when the wait ran out first."""
        start = time.perf_counter()
        limit = min(self.max_wait_s, self.budget_s - self.waited_s)
        if not self.enabled or limit <= 0:
            return True
        while True:
            before = cpu_sample()
            time.sleep(0.3)
            if others_cores(before, cpu_sample()) < self.threshold:
                quiet = True
                break
            if time.perf_counter() - start > limit:
                quiet = False
                break
        self.waited_s += time.perf_counter() - start
        return quiet

    def run(self, measure_row: Any) -> dict[str, Any]:
        """``measure_row()`` while the machine is quiet; again if it was not. The wait is
        skipped while the rows before were quiet."""
        for attempt in range(self.retries + 1):
            if not self.quiet:
                self.wait()
            row = measure_row()
            row.update(noisy=row["others_cores"] >= self.threshold, attempts=attempt + 1)
            self.quiet = not row["noisy"]
            if self.quiet or self.waited_s >= self.budget_s:
                break
        return row


# --- one row ---------------------------------------------------------------------------------


def empty_row(problem: str, impl: Impl, row_name: str, k: int) -> dict[str, Any]:
    return {
        "problem": problem,
        "impl": row_name,
        "base_impl": impl.name,
        "framework": impl.framework,
        "kind": impl.kind,
        "k": k,
        "status": "error",
        "median_s": math.nan,
        "p20_s": math.nan,
        "p80_s": math.nan,
        "per_vector_s": math.nan,
        "per_grad": math.nan,
        "compile_s": math.nan,
        "peak_mem_mb": math.nan,
        "first_call_mem_mb": math.nan,
        "max_rel_err": math.nan,
        "reps": 0,
        "wall_s": math.nan,
        "noisy": False,
        "others_cores": math.nan,
        "faults_per_call": math.nan,
        "attempts": 1,
        "error": "",
    }


def skipped_row(problem: problems.Problem, impl: Impl, row_name: str, k: int) -> dict[str, Any]:
    """The row of an implementation that cannot run on ``problem``, saying why."""
    row = empty_row(problem.name, impl, row_name, k)
    row.update(status="skipped", error=impl.skip_reason(problem) or "", wall_s=0.0)
    return row


def run_one(
    problem: problems.Problem,
    impl: Impl,
    row_name: str,
    k: int,
    refs: dict,
    settings: Settings,
    memory: bool = False,
) -> dict[str, Any]:
    """Checks then times one row in this process. A failure becomes ``status="error"``, a
    result off the reference ``status="wrong"`` (not timed); neither raises. A row that
    cannot run on the problem is ``status="skipped"``; a ``slow`` one (every call takes
    seconds) has no warm-up and one timed call."""
    if impl.skip_reason(problem) is not None:
        return skipped_row(problem, impl, row_name, k)
    if impl.slow:
        settings = dataclasses.replace(settings, warmup=0, min_reps=1, target_s=0.0)
    row = empty_row(problem.name, impl, row_name, k)
    started = time.perf_counter()
    try:
        if hasattr(jaxhvp, "cache_clear"):  # a cold first call for jaxhvp rows, in any process
            jaxhvp.cache_clear()
        case = Case(problem, k)
        call = impl.factory(case)
        tracker = PeakMemory(impl.framework) if memory else None
        if tracker:
            tracker.reset()
        start = time.perf_counter()
        out = sync(call())
        row["compile_s"] = time.perf_counter() - start
        if tracker:
            row["first_call_mem_mb"] = tracker.peak_mb()
        err = problems.rel_err(named(out, problem.names), reference_for(impl, k, refs))
        del out
        row["max_rel_err"] = err
        if not err <= TOLERANCE:
            row["status"] = "wrong"
            row["error"] = f"max_rel_err {err:.3g} > tolerance {TOLERANCE:g}"
            return row
        load = cpu_sample()
        for _ in range(settings.warmup):
            sync(call())
        if tracker:
            tracker.reset()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times = time_calls(call, settings)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        row["others_cores"] = others_cores(load, cpu_sample())
        row["faults_per_call"] = faults / len(times)
        row.update(
            status="ok",
            median_s=float(np.median(times)),
            p20_s=float(np.percentile(times, 20)),
            p80_s=float(np.percentile(times, 80)),
            per_vector_s=float(np.median(times)) / k,
            reps=len(times),
        )
        if tracker:
            row["peak_mem_mb"] = tracker.peak_mb()
    except Exception as exc:  # recorded in the row, never fatal to the suite
        row["error"] = f"{type(exc).__name__}: {exc}".strip()[:500]
        row["traceback"] = traceback.format_exc(limit=-3)
    finally:
        row["wall_s"] = time.perf_counter() - started
    return row


def run_isolated(
    problem: problems.Problem,
    impl: Impl,
    row_name: str,
    k: int,
    refs_path: Path,
    settings: Settings,
    quick: bool,
) -> dict[str, Any]:
    """:func:`run_one` in a fresh ``python -m bench._worker`` process, with peak memory. It is
    killed (with anything it started) after ``settings.timeout_s``: status ``timeout``."""
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "row.json"
        job = {
            "problem": problem.name,
            "impl": impl.name,
            "row_name": row_name,
            "k": k,
            "quick": quick,
            "refs": str(refs_path),
            "out": str(out_path),
            "settings": dataclasses.asdict(settings),
        }
        root, started = Path(__file__).resolve().parent.parent, time.perf_counter()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench._worker", json.dumps(job)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            log, _ = proc.communicate(timeout=settings.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group
            proc.communicate()
            row = empty_row(problem.name, impl, row_name, k)
            row.update(status="timeout", error=f"no result within {settings.timeout_s:g} s")
            return row
        if proc.returncode != 0 or not out_path.exists():
            row = empty_row(problem.name, impl, row_name, k)
            row["error"] = f"worker exited with {proc.returncode}: {log.strip()[-400:]}"
            return row
        row = json.loads(out_path.read_text())
        row["wall_s"] = time.perf_counter() - started  # with the process start
        return row


def save_refs(refs: dict, path: Path) -> None:
    arrays = {f"{part}/{name}": a for part, leaves in refs.items() for name, a in leaves.items()}
    np.savez(path, **arrays)


def load_refs(path: Path) -> dict:
    refs: dict[str, dict[str, np.ndarray]] = {"grad": {}, "hvp": {}}
    with np.load(path) as data:
        for key in data.files:
            part, name = key.split("/", 1)
            refs.setdefault(part, {})[name] = data[key]
    return refs
