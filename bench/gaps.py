"""Where XLA's generated code is slower than PyTorch's: minimal programs, timed side by side.

Each *gap* is one small float32 program written in plain JAX (``jax.jit``) and in torch, the
torch function run eagerly and through ``torch.compile`` (``dynamic=False``). The programs:

* ``sum``: ``jnp.sum(x * x)`` over a vector (n = 100,000; ``--quick`` 10,000);
* ``rosenbrock value``: the Rosenbrock loss of ``bench/problems.py`` (same n);
* ``rosenbrock product``: its Hessian-vector product without the value, ``jvp(grad)``
  (``torch.func.jvp(torch.func.grad(...))`` in torch);
* ``conv0 forward`` / ``conv1 forward``: the CNN problem's first and second convolution
  (NCHW, OIHW, stride 1, padding 1, no bias; its batch: 64, ``--quick`` 16);
* ``conv0 weight gradient`` / ``conv1 weight gradient``: the gradient of
  ``sum(conv(x, w) * g)`` with respect to ``w``: ``jax.grad`` against torch autograd (for
  the compiled row: autograd through the ``torch.compile`` d forward, AOTAutograd's backward);
* ``matmul``: the transformer problem's largest matmul, its MLP's ``(B*T, D) @ (D, 4D)``.

The protocol:

1. the inputs are numpy arrays from a fixed seed, placed once on JAX's default device and on
   :func:`bench.problems.torch_device` (float32 arithmetic in both: on a GPU JAX's matmuls
   and convolutions ask for ``Precision.HIGHEST`` and torch's TF32 is turned off);
2. every program is called once and its result compared with the JAX result:
   ``max |result - jax| / max |jax|`` must stay below :data:`RTOL` (else
   :class:`DisagreementError`), and every result must be float32;
3. the rows of one gap are timed together in this process by :func:`bench.fair.time_rows`
   (rounds of blocks, rotating order, same threads): median ms per call, the per-round
   ratio JAX / torch with its quartiles, and JAX's minor page faults per call;
4. on the CPU, the reduction gaps' JAX programs are timed once more in their own process
   pinned to one core (``python -m bench.gaps --one-core-child``, which calls
   ``configure_threads(1)`` before importing JAX), by the same protocol.

Run from the repository root::

    python -m bench gaps [--quick] [--out results] [--threads N] [--docs]

It writes ``gaps.md`` and ``gaps.json`` to ``--out``; ``--docs`` also copies ``gaps.md`` to
``docs/bench/gaps.md``. ``--quick``: the small sizes, 0.05 s per row and at least 3 rounds,
no ``torch.compile`` and no one-core process.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import add_output_options, configure_threads, copy_to_docs

# JAX and torch are imported by the functions that use them, after configure_threads.

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-3  # max |result - jax| / max |jax| allowed for every torch result
N, N_QUICK = 100_000, 10_000  # the vector of the reduction gaps
TARGET_S, MIN_ROUNDS = 1.0, 20  # per row; --quick: 0.05 s, 3 rounds
TARGET_S_QUICK, MIN_ROUNDS_QUICK = 0.05, 3
JAX, EAGER, COMPILED = "jax.jit", "torch eager", "torch.compile"
NOT_RUN = "not run"


class DisagreementError(AssertionError):
    """A program's result differs from the JAX program's by more than :data:`RTOL`."""


@dataclasses.dataclass
class Gap:
    """One program in both frameworks, on the same ``inputs``."""

    name: str
    isolates: str  # one line: what the program isolates
    shapes: str  # its inputs, as the table shows them
    inputs: tuple[np.ndarray, ...]
    jax_fn: Callable  # plain JAX, jitted by the suite
    torch_fn: Callable  # torch; run eagerly and through torch.compile
    torch_grad_of: int | None = None  # torch: autograd gradient of torch_fn w.r.t. this input
    reduction: bool = False  # also timed on one core, in its own process (CPU only)


# --- the programs ----------------------------------------------------------------------------


def jax_precision() -> Any:
    """None (the default) on the CPU, where float32 is float32; HIGHEST elsewhere (no TF32)."""
    import jax
    from jax import lax

    return None if jax.default_backend() == "cpu" else lax.Precision.HIGHEST


def sum_of_squares_jax(x: Any) -> Any:
    import jax.numpy as jnp

    return jnp.sum(x * x)


def sum_of_squares_torch(x: Any) -> Any:
    import torch

    return torch.sum(x * x)


def rosenbrock_loss(x: Any, a: Any) -> Any:
    """The Rosenbrock problem's loss (works on JAX arrays and torch tensors)."""
    from . import problems

    return problems.rosenbrock({"x": x}, {"a": a})


def rosenbrock_product_jax(x: Any, v: Any, a: Any) -> Any:
    import jax

    return jax.jvp(jax.grad(lambda y: rosenbrock_loss(y, a)), (x,), (v,))[1]


def rosenbrock_product_torch(x: Any, v: Any, a: Any) -> Any:
    import torch

    grad = torch.func.grad(lambda y: rosenbrock_loss(y, a))
    return torch.func.jvp(grad, (x,), (v,))[1]


def conv_jax(x: Any, w: Any) -> Any:
    from jax import lax

    dims = ("NCHW", "OIHW", "NCHW")
    padding = ((1, 1), (1, 1))
    return lax.conv_general_dilated(
        x, w, (1, 1), padding, dimension_numbers=dims, precision=jax_precision()
    )


def conv_torch(x: Any, w: Any) -> Any:
    import torch.nn.functional as F

    return F.conv2d(x, w, padding=1)


def weighted_conv_sum_jax(x: Any, w: Any, g: Any) -> Any:
    import jax.numpy as jnp

    return jnp.sum(conv_jax(x, w) * g)


def weighted_conv_sum_torch(x: Any, w: Any, g: Any) -> Any:
    import torch

    return torch.sum(conv_torch(x, w) * g)


def conv_weight_gradient_jax(x: Any, w: Any, g: Any) -> Any:
    import jax

    return jax.grad(weighted_conv_sum_jax, argnums=1)(x, w, g)


def matmul_jax(a: Any, b: Any) -> Any:
    import jax.numpy as jnp

    return jnp.matmul(a, b, precision=jax_precision())


def matmul_torch(a: Any, b: Any) -> Any:
    import torch

    return torch.matmul(a, b)


# --- the gaps --------------------------------------------------------------------------------


def _shape(a: np.ndarray) -> str:
    return str(a.shape).replace(" ", "")


def reduction_gaps(quick: bool) -> list[Gap]:
    n = N_QUICK if quick else N
    rng = np.random.default_rng(0)
    x = (1.0 + 0.5 * rng.standard_normal(n)).astype(np.float32)  # as the Rosenbrock problem
    v = rng.standard_normal(n).astype(np.float32)
    a = np.ones(n - 1, np.float32)
    return [
        Gap(
            "sum",
            "one elementwise product and a full reduction to a scalar",
            f"x {_shape(x)}",
            (x,),
            sum_of_squares_jax,
            sum_of_squares_torch,
            reduction=True,
        ),
        Gap(
            "rosenbrock value",
            "the Rosenbrock loss: shifted slices, elementwise arithmetic, a full reduction",
            f"x {_shape(x)}",
            (x, a),
            rosenbrock_loss,
            rosenbrock_loss,
            reduction=True,
        ),
        Gap(
            "rosenbrock product",
            "the Hessian-vector product jvp(grad) of the Rosenbrock loss, without its value",
            f"x, v {_shape(x)}",
            (x, v, a),
            rosenbrock_product_jax,
            rosenbrock_product_torch,
        ),
    ]


def conv_gaps(quick: bool) -> list[Gap]:
    """The CNN problem's two convolutions, on its batch and weights."""
    from . import problems

    cnn = problems.build("cnn", quick)
    rng = np.random.default_rng(1)
    x0 = cnn.data["x"]
    batch, _, height, width = x0.shape
    w0, w1 = cnn.params["c0w"], cnn.params["c1w"]
    # conv1's input: conv0's channels after 2x2 pooling
    x1 = rng.standard_normal((batch, w0.shape[0], height // 2, width // 2)).astype(np.float32)
    gaps = []
    for i, (x, w) in enumerate(((x0, w0), (x1, w1))):
        g = rng.standard_normal((batch, w.shape[0], *x.shape[2:])).astype(np.float32)
        shapes = f"x {_shape(x)}, w {_shape(w)}"
        gaps.append(
            Gap(
                f"conv{i} forward",
                f"the CNN's conv{i} (3x3, padding 1, NCHW): the convolution alone",
                shapes,
                (x, w),
                conv_jax,
                conv_torch,
            )
        )
        gaps.append(
            Gap(
                f"conv{i} weight gradient",
                f"the CNN's conv{i}: the gradient of sum(conv(x, w) * g) with respect to w",
                f"{shapes}, g {_shape(g)}",
                (x, w, g),
                conv_weight_gradient_jax,
                weighted_conv_sum_torch,
                torch_grad_of=1,
            )
        )
    return sorted(gaps, key=lambda gap: "weight" in gap.name)  # forwards first


def matmul_gap(quick: bool) -> Gap:
    """The transformer's MLP matmul: its residual stream, flattened, times ``m1w``."""
    from . import problems

    transformer = problems.build("transformer", quick)
    x = transformer.data["x"]
    a = x.reshape(-1, x.shape[-1])
    b = transformer.params["l0.m1w"]
    return Gap(
        "matmul",
        "the transformer's largest matmul, (batch*sequence, width) @ (width, 4*width)",
        f"{_shape(a)} @ {_shape(b)}",
        (a, b),
        matmul_jax,
        matmul_torch,
    )


def build(quick: bool, only: list[str] | None = None) -> list[Gap]:
    """Every gap, or those named in ``only``."""
    gaps = [*reduction_gaps(quick), *conv_gaps(quick), matmul_gap(quick)]
    unknown = set(only or ()) - {gap.name for gap in gaps}
    if unknown:
        raise ValueError(f"no gaps called {sorted(unknown)}: {[gap.name for gap in gaps]}")
    return [gap for gap in gaps if not only or gap.name in only]


# --- calls and the agreement check -----------------------------------------------------------


def jax_call(gap: Gap) -> Callable[[], Any]:
    import jax

    program, args = jax.jit(gap.jax_fn), tuple(jax.device_put(a) for a in gap.inputs)
    return lambda: program(*args)


def torch_call(gap: Gap, compiled: bool) -> Callable[[], Any]:
    import torch

    from . import problems

    args = tuple(problems.to_torch(a) for a in gap.inputs)
    fn = torch.compile(gap.torch_fn, dynamic=False) if compiled else gap.torch_fn
    if gap.torch_grad_of is None:
        return lambda: fn(*args)
    wrt = args[gap.torch_grad_of].requires_grad_()
    return lambda: torch.autograd.grad(fn(*args), wrt)[0]


def to_numpy(result: Any) -> np.ndarray:
    if hasattr(result, "detach"):  # a torch tensor
        result = result.detach().cpu()
    return np.asarray(result)


def check_agreement(name: str, results: dict[str, Any]) -> dict[str, float]:
    """``{row: max |result - jax| / max |jax|}`` for each result after the first (JAX's).

    Raises :class:`DisagreementError` when a result is not float32, has another shape, or
    differs by :data:`RTOL` or more."""
    arrays = {row: to_numpy(r) for row, r in results.items()}
    (reference_row, reference), *others = arrays.items()
    for row, array in arrays.items():
        if array.dtype != np.float32:
            raise DisagreementError(f"{name}: {row} returned {array.dtype}, not float32")
    scale = float(np.max(np.abs(reference))) or 1.0
    errors = {}
    for row, array in others:
        if array.shape != reference.shape:
            msg = f"{name}: {row} has shape {array.shape}, {reference_row} {reference.shape}"
            raise DisagreementError(msg)
        diff = np.abs(array.astype(np.float64) - reference.astype(np.float64))
        errors[row] = float(np.max(diff)) / scale
        if not errors[row] < RTOL:  # NaN fails too
            msg = (
                f"{name}: {row} differs from {reference_row} by {errors[row]:.2e} of its "
                f"largest entry (at most {RTOL:g} allowed)"
            )
            raise DisagreementError(msg)
    return errors


def gap_calls(gap: Gap, compiled: bool) -> dict[str, Callable[[], Any]]:
    """The gap's rows, by name: JAX first, then eager torch (and ``torch.compile``)."""
    calls = {JAX: jax_call(gap), EAGER: torch_call(gap, compiled=False)}
    if compiled:
        calls[COMPILED] = torch_call(gap, compiled=True)
    return calls


# --- timing ----------------------------------------------------------------------------------


def timing_summary(timing: Any) -> dict[str, Any]:
    return {
        "median_s": timing.median_s,
        "p25_s": timing.percentile_s(25),
        "p75_s": timing.percentile_s(75),
        "faults_per_call": timing.faults_per_call,
        "rounds": len(timing.rounds),
        "rounds_s": timing.rounds,
    }


def measure_gap(gap: Gap, compiled: bool, target_s: float, min_rounds: int) -> dict:
    """The gap checked for agreement, then its rows timed together (see the docstring)."""
    from . import fair
    from .measure import sync

    calls = gap_calls(gap, compiled)
    errors = check_agreement(gap.name, {row: sync(call()) for row, call in calls.items()})
    timings = fair.time_rows(calls, target_s, min_rounds)
    ratios = {row: fair.ratio(timings[JAX], timings[row]) for row in calls if row != JAX}
    return {
        "name": gap.name,
        "isolates": gap.isolates,
        "shapes": gap.shapes,
        "reduction": gap.reduction,
        "rel_err": errors,
        "rows": {row: timing_summary(t) for row, t in timings.items()},
        "jax_over": {row: dict(zip(("median", "p25", "p75"), r)) for row, r in ratios.items()},
        "one_core": None,
    }


def one_core_command(names: list[str], quick: bool, target_s: float, min_rounds: int) -> list:
    """``python -m bench.gaps --one-core-child``: the JAX programs of ``names`` on one core."""
    options = ["--only", *names, "--target-time", str(target_s), "--min-rounds", str(min_rounds)]
    quick_flag = ["--quick"] if quick else []
    return [sys.executable, "-m", "bench.gaps", "--one-core-child", *quick_flag, *options]


def one_core_timings(command: list[str]) -> dict[str, dict]:
    """Runs :func:`one_core_command`'s process; its timings by gap (:func:`timing_summary`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        msg = f"the one-core process failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_core_child(options: argparse.Namespace) -> None:
    """In the child: one thread, pinned to one core, before JAX starts; prints JSON."""
    configure_threads(1)
    from . import fair

    calls = {gap.name: jax_call(gap) for gap in build(options.quick, options.only)}
    timings = fair.time_rows(calls, options.target_time, options.min_rounds)
    found = {name: timing_summary(t) for name, t in timings.items()}
    for summary in found.values():
        summary["cores"] = sorted(os.sched_getaffinity(0))
    print(json.dumps(found))


# --- the report ------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "" if seconds is None or math.isnan(seconds) else f"{1e3 * seconds:.3f}"


def _ratio(ratio: dict | None) -> str:
    if ratio is None:
        return NOT_RUN
    return f"{ratio['median']:.2f} [{ratio['p25']:.2f}, {ratio['p75']:.2f}]"


def table(gaps: list[dict], compiled: bool, one_core: str | None) -> str:
    """``one_core``: why the one-core column is empty (None: it was measured)."""
    head = [
        "gap",
        "inputs",
        "JAX ms",
        "torch eager ms",
        "torch.compile ms",
        "JAX / eager [p25, p75]",
        "JAX / compile [p25, p75]",
        "JAX faults / call",
        "JAX 1 core ms",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for gap in gaps:
        rows = gap["rows"]
        if gap["one_core"] is not None:
            single = _ms(gap["one_core"]["median_s"])
        else:
            single = NOT_RUN if gap["reduction"] and one_core else ""
        cells = [
            gap["name"],
            gap["shapes"],
            _ms(rows[JAX]["median_s"]),
            _ms(rows[EAGER]["median_s"]),
            _ms(rows[COMPILED]["median_s"]) if compiled else NOT_RUN,
            _ratio(gap["jax_over"][EAGER]),
            _ratio(gap["jax_over"].get(COMPILED)),
            f"{rows[JAX]['faults_per_call']:.1f}",
            single,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(gaps: list[dict], meta: dict) -> str:
    m, config = meta["machine"], meta["config"]
    one_core = config["one_core"]
    lines = [
        "# Minimal programs: plain JAX against PyTorch",
        "",
        f"Machine: {m['cpu']} ({m['cores']} CPUs), {m['threads']} threads for both "
        f"frameworks; JAX device {m['jax_devices'][0]}; jax {m['jax']} (jaxlib "
        f"{m['jaxlib']}, backend {m['jax_backend']}), torch {m['torch']} (device "
        f"{m['torch_device']}, {m['torch_threads']} threads), python {m['python']}; XLA_FLAGS "
        f"`{m['xla_flags']}`; jaxhvp {m['jaxhvp']} ({m['jaxhvp_commit']}); {meta['date']}. "
        f"Total run time {meta['wall_s']:.0f} s{' (--quick)' if config['quick'] else ''}.",
        "",
        "Each row is one float32 program written in plain JAX (`jax.jit`) and in torch (the "
        "same function eager, and through `torch.compile(dynamic=False)`), run on the same "
        "arrays. Before timing, every result is checked against the JAX result (max abs "
        f"difference at most {config['rtol']:g} of its largest entry). The rows of one "
        "program are timed together in one process by `bench/fair.py`'s protocol (rounds; "
        "in each, a block of calls per row, its first untimed; rotating order; at least "
        f"{config['min_rounds']} rounds and {config['target_s']:g} s of timed calls per "
        "row). Times: the median over rounds of the block medians, in ms per call. JAX / "
        "eager and JAX / compile: the median of the per-round ratios of the JAX time to "
        "the torch time, with their 25th and 75th percentiles (below 1: JAX is faster). "
        "JAX faults / call: minor page faults of the process per timed JAX call. JAX 1 "
        "core: for the reduction programs only, the JAX program timed by the same protocol "
        "in a separate process pinned to one core with one thread (a separate process, so "
        "it is not timed interleaved with the JAX column beside it).",
        "",
        table(gaps, config["torch_compile"], one_core),
        "",
        "What each program isolates:",
        "",
        *(f"- `{gap['name']}`: {gap['isolates']}." for gap in gaps),
        "",
    ]
    if not config["torch_compile"]:
        lines += ["torch.compile: not run (--quick).", ""]
    if one_core:
        lines += [f"JAX 1 core: {one_core}.", ""]
    return "\n".join(lines)


# --- the command line ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench gaps",
        description=__doc__.splitlines()[0],
        epilog="Rows of one program are timed in one process (bench/fair.py).",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, no torch.compile")
    add_output_options(p)
    p.add_argument("--docs", action="store_true", help="also copy gaps.md to docs/bench/")
    p.add_argument("--only", nargs="+", metavar="GAP", help="these gaps only (default all)")
    p.add_argument(
        "--target-time", type=float, help=f"timed s per row ({TARGET_S}; quick {TARGET_S_QUICK})"
    )
    p.add_argument(
        "--min-rounds", type=int, help=f"fewest rounds ({MIN_ROUNDS}; quick {MIN_ROUNDS_QUICK})"
    )
    p.add_argument("--one-core-child", action="store_true", help=argparse.SUPPRESS)
    options = p.parse_args(argv)
    if options.target_time is None:
        options.target_time = TARGET_S_QUICK if options.quick else TARGET_S
    if options.min_rounds is None:
        options.min_rounds = MIN_ROUNDS_QUICK if options.quick else MIN_ROUNDS
    return options


def why_no_one_core(quick: bool) -> str | None:
    """Why the one-core column is not measured (None: it is)."""
    import jax

    if quick:
        return "not run (--quick)"
    if jax.default_backend() != "cpu":
        return f"not run (backend {jax.default_backend()})"
    if not hasattr(os, "sched_setaffinity"):
        return "not run (no sched_setaffinity)"
    return None


def run(options: argparse.Namespace) -> tuple[list[dict], dict]:
    from . import measure

    measure.set_torch_threads(options.threads)
    full_float32_torch()
    started = time.perf_counter()
    compiled = not options.quick
    results = []
    for gap in build(options.quick, options.only):
        print(f"{gap.name}: {gap.shapes}", file=sys.stderr, flush=True)
        results.append(measure_gap(gap, compiled, options.target_time, options.min_rounds))
    one_core = why_no_one_core(options.quick)
    reductions = [gap["name"] for gap in results if gap["reduction"]]
    if one_core is None and reductions:
        print("one core, in its own process", file=sys.stderr, flush=True)
        command = one_core_command(
            reductions, options.quick, options.target_time, options.min_rounds
        )
        found = one_core_timings(command)
        for gap in results:
            gap["one_core"] = found.get(gap["name"])
    meta = run_meta(options, started)
    meta["config"].update(
        {
            "target_s": options.target_time,
            "min_rounds": options.min_rounds,
            "rtol": RTOL,
            "dtype": "float32",
            "torch_compile": compiled,
            "one_core": one_core,
        }
    )
    return results, meta


def full_float32_torch() -> None:
    """No TF32 in torch's matmuls and convolutions (JAX asks for HIGHEST off the CPU)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    if options.one_core_child:
        one_core_child(options)
        return
    configure_threads(options.threads)  # before JAX and torch are imported
    gaps, meta = run(options)
    write_outputs("gaps", markdown(gaps, meta), {"meta": meta, "gaps": gaps}, options)


def run_meta(options: argparse.Namespace, started: float) -> dict[str, Any]:
    """The machine, the date, the wall time since ``started`` and the common options."""
    from . import report

    return {
        "machine": report.machine_info(options.threads),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": time.perf_counter() - started,
        "config": {"quick": options.quick, "threads": options.threads},
    }


def write_outputs(name: str, text: str, payload: Any, options: argparse.Namespace) -> None:
    """``NAME.md`` and ``NAME.json`` into ``--out``, the table printed, and with ``--docs``
    ``NAME.md`` copied to ``docs/bench/``."""
    options.out.mkdir(parents=True, exist_ok=True)
    md = options.out / f"{name}.md"
    md.write_text(text)
    (options.out / f"{name}.json").write_text(json.dumps(payload, indent=1, default=str))
    print(text)
    if options.docs:
        print(f"copied to {copy_to_docs(md)}", file=sys.stderr)


if __name__ == "__main__":
    main()
