"""Top eigenvalue and trace of the benchmark MLP's loss Hessian: jaxhvp.spectrum and PyHessian.

The model is the benchmark suite's ``mlp`` problem (``bench/problems.py``: 784-512-512-10,
tanh, cross-entropy, batch 256, 669,706 float32 parameters), with the same weights and data
in both frameworks. Each row times the whole computation a user runs: building the Hessian
(``jaxhvp.hessian_operator``; PyHessian's ``hessian(model, criterion, data)``, one backward
pass with ``create_graph=True``) and then the estimate. ``first`` is the first call
(compilation included for JAX), ``median`` the median of the timed repetitions after it,
which run in rounds, every case once per round, so that load changes hit all alike.

References, in float64 with JAX: the top eigenvalue by ``spectrum.eigenvalues`` at
``tol=1e-10`` (residual-checked), the trace by Hutch++ with many probes (an estimate, with
its standard error). Run from the repository root::

    python -m bench.spectrum [--quick] [--json rows.json]

PyHessian is optional (``pip install --no-deps pyhessian``; version 0.1 needs only torch
and numpy); without it the PyHessian rows say why they are missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxhvp
import jaxhvp.spectrum as spectrum
from bench import problems

EIG_TOL = 1e-3  # PyHessian's default tolerance (on the eigenvalue's change, there)
TRACE_PROBES = 99  # Hutch++ splits its products in thirds
PYHESSIAN_MAX_ITER = 100  # PyHessian's default for both quantities


@dataclasses.dataclass
class Case:
    """One row: ``fn`` runs the whole computation (and blocks); ``summary`` reads its result."""

    kind: str  # "top_eigenvalue" or "trace"
    impl: str
    framework: str
    fn: Callable[[], Any]
    summary: Callable[[Any], dict]  # -> {"value", "hvps", and optionally "stderr", ...}


def measure(cases: list[Case], reps: int) -> list[dict]:
    """First calls in order, then ``reps`` rounds timing every case once per round.

    Interleaving the cases spreads the machine's load changes over all of them alike.
    """
    rows = []
    for case in cases:
        start = time.perf_counter()
        result = case.fn()
        first = time.perf_counter() - start
        rows.append({"first_call_s": first, "times": [], **case.summary(result)})
    for _ in range(reps):
        for case, r in zip(cases, rows):
            start = time.perf_counter()
            case.fn()
            r["times"].append(time.perf_counter() - start)
    return [
        {
            "problem": "mlp",
            "kind": case.kind,
            "impl": case.impl,
            "framework": case.framework,
            **r,
            "median_s": statistics.median(r["times"]),
            "p20_s": float(np.percentile(r["times"], 20)),
            "p80_s": float(np.percentile(r["times"], 80)),
            "reps": reps,
        }
        for case, r in zip(cases, rows)
    ]


# --- jaxhvp ----------------------------------------------------------------------------------


def jax_cases(problem: problems.Problem) -> list[Case]:
    params = jax.tree.map(jnp.asarray, problem.params)
    data = jax.tree.map(jnp.asarray, problem.data)

    def loss(p: dict) -> jax.Array:
        return problem.jax_loss(p, data)

    def top(tol: float | None) -> Callable[[], Any]:
        def run() -> Any:
            op = jaxhvp.hessian_operator(loss, params)
            return jax.block_until_ready(spectrum.eigenvalues(op, key=jax.random.key(0), tol=tol))

        return run

    def trace(method: str, batch_size: int | None) -> Callable[[], Any]:
        def run() -> Any:
            op = jaxhvp.hessian_operator(loss, params)
            est = spectrum.trace(
                op,
                key=jax.random.key(0),
                num_probes=TRACE_PROBES,
                method=method,
                probe_batch_size=batch_size,
            )
            return jax.block_until_ready(est)

        return run

    def eigen_summary(eig: Any) -> dict:
        converged = bool(eig.converged[0])
        return {"value": float(eig.values[0]), "hvps": int(eig.num_matvecs), "converged": converged}

    def trace_summary(est: Any) -> dict:
        return {
            "value": float(est.value),
            "hvps": int(est.num_matvecs),
            "stderr": float(est.stderr),
        }

    cases = [
        Case("top_eigenvalue", f"jaxhvp eigenvalues, {name}", "jax", top(tol), eigen_summary)
        for name, tol in ((f"tol={EIG_TOL:g}", EIG_TOL), ("tol=sqrt(eps)", None))
    ]
    for method, batch_size in (("hutch++", None), ("hutch++", 33), ("hutchinson", None)):
        label = f"jaxhvp trace, {method}" + (f", probe_batch_size={batch_size}" * bool(batch_size))
        cases.append(Case("trace", label, "jax", trace(method, batch_size), trace_summary))
    return cases


def references(problem: problems.Problem, trace_probes: int) -> dict[str, tuple[float, float]]:
    """Float64 references: ``{"top_eigenvalue": (value, 0), "trace": (value, stderr)}``."""
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), problem.params)
        data = {
            k: jnp.asarray(x, jnp.float64 if x.dtype.kind == "f" else x.dtype)
            for k, x in problem.data.items()
        }
        op = jaxhvp.hessian_operator(lambda p: problem.jax_loss(p, data), params)
        eig = spectrum.eigenvalues(op, key=jax.random.key(1), tol=1e-10, max_matvecs=3000)
        assert bool(eig.converged[0]), eig
        est = spectrum.trace(
            op, key=jax.random.key(1), num_probes=trace_probes, probe_batch_size=50
        )
        return {
            "top_eigenvalue": (float(eig.values[0]), 0.0),
            "trace": (float(est.value), float(est.stderr)),
        }


# --- PyHessian -------------------------------------------------------------------------------


class TorchMLP(torch.nn.Module):
    """The benchmark MLP as an ``nn.Module`` (PyHessian takes a model and a criterion)."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for i in range(3):
            w, b = params[f"w{i}"], params[f"b{i}"]
            layer = torch.nn.Linear(*w.shape)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(w.T.copy()))  # y = x W^T + b in torch
                layer.bias.copy_(torch.from_numpy(b.copy()))
            self.layers.append(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = torch.tanh(x) if i < 2 else x
        return x


def pyhessian_cases(problem: problems.Problem) -> tuple[list[Case], list[str]]:
    """The PyHessian cases (none, with the reason, if it is missing) and notes."""
    try:
        import pyhessian

        # The package's __init__ rebinds pyhessian.hessian to the class: fetch the module.
        pyhessian_hessian = importlib.import_module("pyhessian.hessian")
    except ImportError as error:
        return [], [f"PyHessian is not installed ({error}); pip install --no-deps pyhessian"]
    model = TorchMLP(problem.params)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.from_numpy(problem.data["x"].copy())
    y = torch.from_numpy(problem.data["y"].astype(np.int64))
    with torch.no_grad():
        torch_loss = float(criterion(model(x), y))
    jax_loss = float(problem.jax_loss(problem.params, problem.data))
    notes = [f"same model: torch loss {torch_loss:.7g}, JAX loss {jax_loss:.7g}"]

    products = [0]  # PyHessian's single-batch products all go through this function
    original = pyhessian_hessian.hessian_vector_product

    def counted(*args: Any) -> Any:
        products[0] += 1
        return original(*args)

    pyhessian_hessian.hessian_vector_product = counted

    def comp() -> Any:
        with warnings.catch_warnings():  # backward(create_graph=True) warns of a ref cycle
            warnings.simplefilter("ignore")
            return pyhessian.hessian(model, criterion, data=(x, y), cuda=False)

    def top() -> Any:
        products[0] = 0
        torch.manual_seed(0)
        values, _ = comp().eigenvalues(maxIter=PYHESSIAN_MAX_ITER, tol=EIG_TOL, top_n=1)
        return values[0], products[0]

    def trace() -> Any:
        products[0] = 0
        torch.manual_seed(0)
        return comp().trace(maxIter=PYHESSIAN_MAX_ITER, tol=EIG_TOL), products[0]

    def trace_summary(result: Any) -> dict:
        samples, count = result
        stderr = float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
        return {"value": float(np.mean(samples)), "hvps": count, "stderr": stderr}

    try:
        comp().density(iter=5, n_v=1)
        notes.append("PyHessian density: ran")
    except Exception as error:  # reported as found
        notes.append(
            f"PyHessian density fails with torch {torch.__version__}: "
            f"{type(error).__name__}: {str(error).splitlines()[0]}"
        )
    cases = [
        Case(
            "top_eigenvalue",
            "PyHessian eigenvalues (power iteration)",
            "torch",
            top,
            lambda r: {"value": float(r[0]), "hvps": r[1]},
        ),
        Case("trace", "PyHessian trace (Hutchinson)", "torch", trace, trace_summary),
    ]
    return cases, notes


# --- report ----------------------------------------------------------------------------------


def table(rows: list[dict], refs: dict[str, tuple[float, float]]) -> str:
    lines = [
        "| quantity | implementation | value | rel. error vs float64 reference | Hessian "
        "products | median (s) [p20, p80] | first call (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref, ref_err = refs[r["kind"]]
        err = abs(r["value"] - ref) / abs(ref)
        value = f"{r['value']:.6g}" + (f" ± {r['stderr']:.3g}" if "stderr" in r else "")
        lines.append(
            f"| {r['kind'].replace('_', ' ')} | {r['impl']} | {value} | {err:.2e} | {r['hvps']} "
            f"| {r['median_s']:.3f} [{r['p20_s']:.3f}, {r['p80_s']:.3f}] "
            f"| {r['first_call_s']:.2f} |"
        )
    for kind, (ref, ref_err) in refs.items():
        spread = f" ± {ref_err:.3g} (standard error)" if ref_err else " (residual-checked)"
        lines.append(f"\nReference {kind.replace('_', ' ')}: {ref:.8g}{spread}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and probes")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    reps = 2 if args.quick else 7
    problem = problems.build("mlp", quick=False)
    print(
        f"{problem.description}: {problem.size} parameters; jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start"
    )
    torch_cases, notes = pyhessian_cases(problem)
    rows = measure(jax_cases(problem) + torch_cases, reps)
    refs = references(problem, 300 if args.quick else 999)
    print(table(rows, refs))
    for note in notes:
        print(f"\n{note}")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "references": refs}, indent=1))


if __name__ == "__main__":
    main()
