"""Comparison benchmark suite: jaxhvp against raw JAX and PyTorch.

Run ``python -m bench`` (or ``python -m bench --quick``) from the repository root; see
``python -m bench --help``. Modules:

* ``problems``: the synthetic problems, each defined once in JAX and once in torch on the same
  numpy data, with a reference Hessian-vector product;
* ``impls``: the implementation registry (name -> factory of a zero-argument callable; the
  diagnostic rows marked);
* ``measure``: the correctness check, first call and memory measurement of each row;
* ``fair``: the timing protocol: rows timed together, by rounds in a rotating order;
* ``summary``: summary.md (every section), headline.md (the README's table);
* ``minimize``, ``spectrum``: the optimiser and spectrum sections;
* ``report``: CSV, JSON, the printed table and the figures;
* ``interleaved``: the diagnostic tables of ``--diagnostics``;
* ``_worker``: one (problem, implementation) in a fresh process, for peak memory.

This module imports neither JAX nor torch: :func:`configure_threads` has to run first.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

JAX_PREALLOCATE_OFF = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "bench"  # where the docs include tables


def configure_threads(threads: int) -> None:
    """Gives JAX and torch the same ``threads`` cores; call before importing either.

    On Linux the process is pinned to the first ``threads`` cores when fewer than all are
    asked for: both XLA's and torch's thread pools size themselves from the affinity mask.
    ``XLA_FLAGS`` keeps Eigen multi-threaded, and :func:`bench.measure.set_torch_threads`
    calls ``torch.set_num_threads`` once torch is imported. On a GPU, JAX is told not to
    preallocate most of the device memory, so that both frameworks can share it.
    """
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if available and threads < len(available):
        os.sched_setaffinity(0, available[:threads])
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        flags = f"{flags} --xla_cpu_multi_thread_eigen=true".strip()
    os.environ["XLA_FLAGS"] = flags
    for key, value in JAX_PREALLOCATE_OFF.items():
        os.environ.setdefault(key, value)
    os.environ["BENCH_THREADS"] = str(threads)
    # torch.compile: its C++ compiler workers would compete with the timed process, and its
    # on-disk caches would make a first call warm; JAX's persistent cache is off by default.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")


def default_threads() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--out`` and ``--threads``, as every suite of ``python -m bench`` takes them."""
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (results)")
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="threads for both frameworks (default: all cores available)",
    )


def copy_to_docs(path: Path, docs: Path = DOCS) -> Path:
    """``path`` copied into ``docs`` (``--docs`` of every suite), under its own name."""
    docs.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(path, docs / path.name))
