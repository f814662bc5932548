r"""Data-parallel curvature products on ``N`` simulated devices: what each program communicates.

The benchmark MLP (``bench/problems.py``'s ``mlp``: 784-512-512-10, tanh, cross-entropy,
669,706 float32 parameters) on data generated here: ``BATCHES_PER_DEVICE * N`` batches of
``BATCH`` examples, stacked as ``(num_batches, BATCH, ...)``. For the Hessian operator and the
GGN operator, one product with a fixed vector is compiled and timed as five programs:

* ``1 device``: all the data on one device, ``jax.jit`` of the operator's product: the
  reference every other row must match (to float32 rounding: ``RTOL`` of its largest entry);
* ``jaxhvp, placed batches``: the operator built on batches placed with
  ``NamedSharding(mesh, P("data"))`` (the split is read from the placement), its product
  under ``jax.jit``;
* ``jaxhvp, data_axis``: the operator built inside ``jax.jit`` with ``data_axis="data"``,
  under ``jax.set_mesh(mesh)`` (an Auto mesh: inside jit the placement is not visible);
* ``GSPMD baseline``: the same call inside ``jax.jit`` without ``data_axis``, the batches
  placed as above: the partitioner sees a scan over a sharded axis;
* ``shard_map + psum``: the ideal program written by hand: ``jax.shard_map`` over ``"data"``,
  each device scanning its own batches with ``jax.jvp(jax.grad(loss))`` (the GGN:
  ``jax.linearize`` of the model, the output-space Hessian, the transposed linearization),
  one ``lax.psum`` of the sum.

Columns: the median time per product over ``--repeat`` calls after a warm-up call (the
compiled executable, ``block_until_ready``); the scan steps, how many batches each device runs
through (the batch loop's trip count in the compiled HLO); the collectives in the HLO of one
product (``all-reduce``, ``all-gather``, ``all-to-all``, ``collective-permute``,
``reduce-scatter``; a collective inside a loop counts once per iteration) and the bytes they
communicate per product (the byte size of their results); beside it the ideal: one
all-reduce of the product, the parameters' size (none on one device); the largest absolute
difference from the 1-device product.

On the CPU the ``N`` devices are simulated (``--xla_force_host_platform_device_count``): they
share this machine's cores, so the times show each program's overhead and how much work it
repeats, not a speed-up. The bytes are the number that carries over to real devices.

The device count is fixed when JAX starts, so :func:`main` runs the benchmark in a fresh
interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` and
``JAX_PLATFORMS=cpu`` unless this one was started that way. Run from the repository root::

    python -m bench.sharding [--devices 8] [--quick] [--out results]

It writes ``sharding.md`` and ``sharding.json`` to ``--out`` and exits with an error when a
row disagrees with the 1-device product. ``--quick``: one batch per device, two timed calls.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import configure_threads, default_threads

# JAX is imported by the functions that use it, after configure_threads and the device flag.

ROOT = Path(__file__).resolve().parents[1]
DEVICE_FLAG = "--xla_force_host_platform_device_count"
CHILD = "BENCH_SHARDING_CHILD"  # set in the re-executed interpreter: no second re-execution
AXIS = "data"
BATCH = 64
BATCHES_PER_DEVICE = 2  # --quick: 1
REPEAT = 5  # --quick: 2
RTOL = 1e-4  # agreement with the 1-device product: max |diff| <= RTOL * max |reference|
OPERATORS = ("hessian", "ggn")
REFERENCE = "1 device"
PROGRAMS = (
    REFERENCE,
    "jaxhvp, placed batches",
    "jaxhvp, data_axis",
    "GSPMD baseline",
    "shard_map + psum",
)
COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")


# --- collectives in compiled HLO (no JAX needed) ---------------------------------------------


@dataclasses.dataclass
class HloStats:
    """What one execution of an HLO module communicates, and its longest loop."""

    counts: dict[str, int]  # collectives run, by op
    bytes: int  # the bytes of their results
    unknown_trips: int = 0  # collectives inside a loop whose trip count XLA does not know
    loop_steps: int = 1  # iterations of the most-run loop body (nested loops multiplied)


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.*?)\s*"
    r"(?P<op>" + "|".join(COLLECTIVES) + r")(?P<phase>-start|-done)?\("
)
_ARRAY = re.compile(r"\b(?P<dtype>pred|[a-z]+(?P<bits>\d+)[a-z0-9]*)\[(?P<dims>[\d,]*)\]")
# The attributes that name called computations: body=%b, to_apply=%r, calls=%f,
# branch_computations={%a, %b}, ...
_CALLS = re.compile(
    r"\b(?P<attr>body|condition|to_apply|calls|true_computation|false_computation|"
    r"branch_computations)=(?P<names>\{[^}]*\}|%[\w.\-]+)"
)
_NAME = re.compile(r"%([\w.\-]+)")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def shape_bytes(shape: str) -> int:
    """The bytes of an HLO shape: ``f32[64,10]{1,0}`` is 2560, a tuple the sum of its parts."""
    total = 0
    for m in _ARRAY.finditer(shape):
        bits = 8 if m["dtype"] == "pred" else int(m["bits"])
        total += math.prod(int(d) for d in m["dims"].split(",") if d) * bits
    return (total + 7) // 8


def hlo_stats(hlo: str) -> HloStats:
    """The collectives of compiled HLO text (``compiled.as_text()``), once per execution.

    Each op counts once with the byte size of its result (an async pair ``*-start`` /
    ``*-done`` once, with the result of ``*-done``), times the trip count of every ``while``
    loop around it (from XLA's ``known_trip_count``; unknown: counted once, and reported).
    ``loop_steps``: how often the most-run loop body runs (here: the batches one device
    scans; 1 where XLA removed or unrolled the loop).
    """
    computations: dict[str, list[str]] = {}
    entry, lines = None, None
    for line in hlo.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("(", 1)[0]:
            lines = computations.setdefault(header["name"], [])
            entry = header["name"] if line.startswith("ENTRY") else entry
        elif lines is not None:
            lines.append(line)
    multiplier = _multipliers(computations, entry)
    counts, total, unknown = dict.fromkeys(COLLECTIVES, 0), 0, 0
    for name, body in computations.items():
        times = multiplier.get(name, 1)
        for line in body:
            m = _INSTRUCTION.match(line)
            if m is None:
                continue
            unknown += times is None
            times_known = 1 if times is None else times
            if m["phase"] != "-done":
                counts[m["op"]] += times_known
            if m["phase"] != "-start":
                total += times_known * shape_bytes(m["shape"])
    steps = max((n for n in multiplier.values() if n is not None), default=1)
    return HloStats(counts, total, unknown, steps)


def _multipliers(computations: dict[str, list[str]], entry: str | None) -> dict:
    """How often each computation runs per execution of ``entry`` (None: unknown)."""
    runs: dict[str, int | None] = {}
    stack = [(entry, 1)] if entry else []
    while stack:
        name, times = stack.pop()
        if name in runs:
            continue
        runs[name] = times
        for line in computations.get(name, ()):
            trips = _TRIPS.search(line)
            for call in _CALLS.finditer(line):
                inner = times
                if call["attr"] == "body":  # a while loop's body: once per iteration
                    inner = None if times is None or trips is None else times * int(trips[1])
                stack.extend((callee, inner) for callee in _NAME.findall(call["names"]))
    return runs


# --- running with N devices ------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.sharding",
        description=__doc__.splitlines()[0],
        epilog="Times on simulated CPU devices show overhead, not speed-up; bytes carry over.",
    )
    p.add_argument("--devices", type=int, default=8, help="simulated CPU devices (8)")
    p.add_argument("--quick", action="store_true", help="one batch per device, 2 timed calls")
    p.add_argument("--repeat", type=int, help=f"timed calls per row ({REPEAT}; --quick 2)")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (results)")
    options = p.parse_args(argv)
    if options.devices < 2:
        p.error(f"--devices must be at least 2 to split the data, but got {options.devices}")
    options.repeat = options.repeat or (2 if options.quick else REPEAT)
    options.batches_per_device = 1 if options.quick else BATCHES_PER_DEVICE
    return options


def configured(devices: int) -> bool:
    """Whether JAX in this interpreter runs (or will start) with ``devices`` CPU devices."""
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        return jax.default_backend() == "cpu" and jax.device_count() == devices
    flags = os.environ.get("XLA_FLAGS", "").split()
    return f"{DEVICE_FLAG}={devices}" in flags and os.environ.get("JAX_PLATFORMS") == "cpu"


def child_env(devices: int) -> dict[str, str]:
    """This environment, with JAX on ``devices`` simulated CPU devices and ``bench`` on the path."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
    env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_FLAG}={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env[CHILD] = "1"
    return env


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    if not configured(options.devices):
        if os.environ.get(CHILD):
            msg = (
                f"JAX did not start with {options.devices} CPU devices although XLA_FLAGS is "
                f"{os.environ.get('XLA_FLAGS')!r}: was jax imported before bench.sharding?"
            )
            raise RuntimeError(msg)
        args = sys.argv[1:] if argv is None else list(argv)
        command = [sys.executable, "-m", "bench.sharding", *args]
        sys.exit(subprocess.run(command, env=child_env(options.devices)).returncode)
    configure_threads(default_threads())  # before JAX starts, as in every bench module
    started = time.perf_counter()
    rows, meta = run(options)
    meta["wall_s"] = time.perf_counter() - started
    text = markdown(rows, meta)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "sharding.md").write_text(text)
    payload = {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}
    (options.out / "sharding.json").write_text(json.dumps(payload, indent=1, default=str))
    print(text)
    bad = [f"{r.operator} / {r.program}: {r.max_abs_diff:.2e}" for r in rows if not r.agrees]
    if bad:
        msg = (
            f"rows disagree with the 1-device product (max |diff| > {RTOL} * "
            f"max |reference|): {'; '.join(bad)}"
        )
        raise SystemExit(msg)


# --- the measurements ------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    operator: str
    program: str
    devices: int
    median_s: float
    times_s: list[float]
    compile_s: float
    counts: dict[str, int]
    bytes: int
    ideal_bytes: int
    unknown_trips: int
    loop_steps: int
    max_abs_diff: float
    reference_max_abs: float
    agrees: bool


@dataclasses.dataclass
class Program:
    """One compiled product: ``fn(*args)``, lowered under ``jax.set_mesh(mesh)`` if given."""

    fn: Callable
    args: tuple
    mesh: Any = None


def run(options: argparse.Namespace) -> tuple[list[Row], dict]:
    import jax
    import numpy as np

    from bench import problems, report

    devices = jax.device_count()
    problem = problems.build("mlp", quick=False)
    count = options.batches_per_device * devices
    rng = np.random.default_rng(0)
    features, classes = problem.params["w0"].shape[0], problem.params["b2"].shape[0]
    data = {
        "x": rng.standard_normal((count, BATCH, features)).astype(np.float32),
        "y": rng.integers(0, classes, (count, BATCH)).astype(np.int32),
    }
    vector = {name: v[0] for name, v in problem.vectors(1).items()}
    ideal = problem.size * np.dtype(np.float32).itemsize
    print(
        f"{problem.description} ({problem.size:,} parameters), {count} batches of {BATCH} on "
        f"{devices} devices, {options.repeat} timed calls per row",
        flush=True,
    )
    rows = []
    for operator in OPERATORS:
        reference = None
        for name, program in programs(operator, problem.params, data, vector, devices).items():
            compile_s, times, hlo, out = measure(program, options.repeat)
            reference = out if reference is None else reference
            diff, scale = max_abs_diff(out, reference), max_abs(reference)
            found = hlo_stats(hlo)
            rows.append(
                Row(
                    operator=operator,
                    program=name,
                    devices=1 if name == REFERENCE else devices,
                    median_s=statistics.median(times),
                    times_s=times,
                    compile_s=compile_s,
                    counts=found.counts,
                    bytes=found.bytes,
                    ideal_bytes=0 if name == REFERENCE else ideal,
                    unknown_trips=found.unknown_trips,
                    loop_steps=found.loop_steps,
                    max_abs_diff=diff,
                    reference_max_abs=scale,
                    agrees=diff <= RTOL * scale,
                )
            )
            print(f"  {operator:8} {name:24} {1e3 * rows[-1].median_s:9.1f} ms", flush=True)
    meta = {
        **report.machine_info(default_threads()),
        "processor": platform.processor(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "devices": devices,
        "problem": problem.description.split(",")[0] + ", tanh, cross-entropy",
        "parameters": problem.size,
        "num_batches": count,
        "batch": BATCH,
        "repeat": options.repeat,
        "quick": options.quick,
        "rtol": RTOL,
        "data_bytes": sum(x.nbytes for x in data.values()),
    }
    return rows, meta


def programs(operator: str, params: dict, data: dict, vector: dict, devices: int) -> dict:
    """The five programs of one operator's product, by name (:data:`PROGRAMS`)."""
    import jax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((devices,), (AXIS,), axis_types=(AxisType.Auto,))
    one = jax.devices()[0]
    p1, d1, v1 = (jax.device_put(t, one) for t in (params, data, vector))
    replicated = NamedSharding(mesh, P())
    p, v = jax.device_put(params, replicated), jax.device_put(vector, replicated)
    d = jax.device_put(data, NamedSharding(mesh, P(AXIS)))

    def product(p: dict, d: dict, u: dict, **options: Any) -> dict:
        return build(operator, p, d, jit=False, **options) @ u

    def split_product(p: dict, d: dict, u: dict) -> dict:
        return product(p, d, u, data_axis=AXIS)

    found = {
        REFERENCE: Program(jax.jit(product), (p1, d1, v1)),
        "jaxhvp, placed batches": Program(jax.jit(_apply), (build(operator, p, d), v)),
        "jaxhvp, data_axis": Program(jax.jit(split_product), (p, d, v), mesh),
        "GSPMD baseline": Program(jax.jit(product), (p, d, v), mesh),
        "shard_map + psum": Program(ideal_product(operator, mesh), (p, d, v)),
    }
    assert tuple(found) == PROGRAMS
    return found


def _apply(op: Any, u: Any) -> Any:
    return op @ u


def build(operator: str, params: Any, batches: Any, **options: Any) -> Any:
    """jaxhvp's data-averaged operator of the MLP's loss over ``batches``."""
    import jaxhvp
    from bench import problems

    if operator == "hessian":
        return jaxhvp.hessian_operator(problems.mlp_jax, params, batches=batches, **options)
    model, loss = problems.mlp_model_jax, problems.cross_entropy_jax
    return jaxhvp.ggn_operator(model, loss, params, batches=batches, **options)


def batch_product(operator: str, params: dict, batch: dict, v: dict) -> dict:
    """One batch's Hessian- or GGN-vector product, written with JAX's transformations."""
    import jax

    from bench import problems

    if operator == "hessian":
        grad = jax.grad(problems.mlp_jax)
        return jax.jvp(lambda p: grad(p, batch), (params,), (v,))[1]
    outputs, jvp = jax.linearize(lambda p: problems.mlp_model_jax(p, batch), params)
    grad = jax.grad(problems.cross_entropy_jax)
    hjv = jax.jvp(lambda o: grad(o, batch), (outputs,), (jvp(v),))[1]
    (ggnv,) = jax.linear_transpose(jvp, params)(hjv)
    return ggnv


def ideal_product(operator: str, mesh: Any) -> Callable:
    """The hand-written data-parallel product: a scan per device, one ``psum``."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.sharding import PartitionSpec as P

    def local(params: dict, batches: dict, v: dict) -> dict:
        # Varying over the axis, as the batches are: otherwise the transpose of the implicit
        # broadcast of params would add a psum per batch.
        params, v = jax.tree.map(lambda x: lax.pcast(x, AXIS, to="varying"), (params, v))

        def add(total: dict, batch: dict) -> tuple[dict, None]:
            return jax.tree.map(jnp.add, total, batch_product(operator, params, batch, v)), None

        total, _ = lax.scan(add, jax.tree.map(jnp.zeros_like, params), batches)
        count = lax.axis_size(AXIS) * jax.tree.leaves(batches)[0].shape[0]
        return jax.tree.map(lambda t: t / count, lax.psum(total, AXIS))

    spec = (P(), P(AXIS), P())
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=P()))


def measure(program: Program, repeat: int) -> tuple[float, list[float], str, Any]:
    """Compile time, ``repeat`` timed calls after a warm-up, the HLO text and the result."""
    import jax

    start = time.perf_counter()
    with contextlib.nullcontext() if program.mesh is None else jax.set_mesh(program.mesh):
        compiled = program.fn.lower(*program.args).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(*program.args))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*program.args))
        times.append(time.perf_counter() - start)
    return compile_s, times, compiled.as_text(), out


def max_abs_diff(a: Any, b: Any) -> float:
    import jax
    import numpy as np

    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    return max(jax.tree.leaves(diffs))


def max_abs(tree: Any) -> float:
    import jax
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(tree))


# --- the report ------------------------------------------------------------------------------


def _bytes(n: int) -> str:
    return f"{n:,}"


def table(rows: list[Row]) -> str:
    head = [
        "operator",
        "program",
        "devices",
        "ms / product",
        "scan steps",
        *COLLECTIVES,
        "bytes / product",
        "ideal bytes",
        "max abs diff",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        cells = [
            r.operator,
            r.program,
            str(r.devices),
            f"{1e3 * r.median_s:.1f}",
            str(r.loop_steps),
            *(str(r.counts[c]) for c in COLLECTIVES),
            _bytes(r.bytes) + (" (+ loops of unknown length)" if r.unknown_trips else ""),
            _bytes(r.ideal_bytes),
            "reference" if r.program == REFERENCE else f"{r.max_abs_diff:.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(rows: list[Row], meta: dict) -> list[str]:
    """One line per multi-device program (its communication against the ideal, the
    batches each device scans), and what the GSPMD baseline does instead of a reduction."""
    out, total = [], meta["num_batches"]
    for r in rows:
        if r.program == REFERENCE:
            continue
        ops = ", ".join(f"{n} {c}" for c, n in r.counts.items() if n) or "no collectives"
        out.append(
            f"- {r.operator}, {r.program}: {ops}, {r.bytes:,} bytes "
            f"({r.bytes / r.ideal_bytes:.2f} x the ideal); each device scans "
            f"{r.loop_steps} of the {total} batches."
        )
    for r in rows:
        if r.program != "GSPMD baseline":
            continue
        if r.counts["all-gather"] and r.loop_steps == total:
            out.append(
                f"\nThe {r.operator} GSPMD baseline all-gathers the stacked batches (the whole "
                f"data set, {meta['data_bytes']:,} bytes here: it grows with the data, where "
                "the ideal stays the size of the parameters) and then every device scans all "
                f"{total} batches: {meta['devices']} times the work of the split programs."
            )
        else:
            out.append(
                f"\nThe {r.operator} GSPMD baseline does not all-gather and scan everything: "
                f"{r.counts}, {r.bytes:,} bytes, {r.loop_steps} scan steps per device."
            )
    return out


def markdown(rows: list[Row], meta: dict) -> str:
    cpu = meta["processor"] or meta["cpu"]
    scale = max(r.reference_max_abs for r in rows)
    lines = [
        f"# Data-parallel curvature products on {meta['devices']} simulated devices",
        "",
        f"Machine: {cpu}, {meta['cores']} CPUs; python {meta['python']}, jax {meta['jax']} "
        f"(jaxlib {meta['jaxlib']}, {meta['jax_backend']}), {meta['devices']} devices "
        f"(XLA_FLAGS {meta['xla_flags']}), jaxhvp {meta['jaxhvp']} ({meta['jaxhvp_commit']}); "
        f"{meta['date']}. Total run time {meta['wall_s']:.0f} s"
        f"{' (--quick)' if meta['quick'] else ''}.",
        "",
        f"Problem: {meta['problem']}, {meta['parameters']:,} float32 parameters; "
        f"{meta['num_batches']} batches of {meta['batch']} examples stacked on a leading axis "
        f"({meta['num_batches'] // meta['devices']} per device), one product with a fixed "
        f"vector. Time: median of {meta['repeat']} calls of the compiled product after a "
        "warm-up call. Scan steps: iterations of the batch loop each device runs (from the "
        "compiled HLO). Collectives: ops in the compiled HLO of one product (each loop "
        "iteration counted); bytes: the sum of their result sizes. Ideal: one all-reduce of "
        "the parameters' size. Max abs diff: against the 1-device product (entries up to "
        f"{scale:.1e}; every row must be within {meta['rtol']:g} of that).",
        "",
        f"**On the CPU the {meta['devices']} devices are simulated: they all share this "
        f"machine's {meta['cores']} cores, so the times show each program's overhead and "
        "repeated work, not a speed-up. The bytes column is the number that carries over to "
        "real devices.**",
        "",
        table(rows),
        "",
        *findings(rows, meta),
        "",
        "Programs: `1 device`: all data on one device, `jax.jit` of `op @ v`. `jaxhvp, placed "
        "batches`: the operator built on batches placed with `NamedSharding(mesh, "
        "P('data'))`, `jax.jit(lambda op, v: op @ v)`. `jaxhvp, data_axis`: built inside "
        "`jax.jit` with `data_axis='data'` under `jax.set_mesh(mesh)` (Auto axis). `GSPMD "
        "baseline`: the same call without `data_axis`: the partitioner sees a scan over a "
        "sharded axis. `shard_map + psum`: hand-written, each device scans its own batches "
        "with `jax.jvp(jax.grad(loss))` (GGN: `jax.linearize` of the model, the loss's "
        "output-space Hessian, `jax.linear_transpose`), one `lax.psum`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
