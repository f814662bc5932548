r"""Inverse curvature products on the benchmark MLP: ``jaxhvp.solve`` against pyDVL.

Each row solves ``(A + lam I) x = g`` for the gradient ``g`` of the benchmark MLP's loss
(``bench/problems.py``'s ``mlp``: 784-512-512-10, tanh, cross-entropy, batch 256, 669,706
float32 parameters; ``--quick``: 32-16-16-10 at batch 64, 970 parameters), with the same
weights and data in JAX and torch, for two curvatures ``A``:

* the generalized Gauss-Newton ``G``, damped with ``lam = 1e-3 lambda_max(G)``: positive
  definite, condition number at most 1001;
* the Hessian ``H``, which is indefinite at these weights: ``lam = -lambda_min(H) + 1e-3
  lambda_max(H)``, so that ``H + lam I`` is positive definite with smallest eigenvalue
  ``1e-3 lambda_max(H)``. (With ``lam = 1e-3 lambda_max`` alone ``H + lam I`` would still be
  indefinite, with eigenvalues near zero: not well-posed, and no method converges.)

The eigenvalues come from ``jaxhvp.spectrum.eigenvalues`` in float64 (Lanczos residuals at
most ``1e-6 lambda_max``, checked) and the reference ``x`` from a float64 CG solve to a
relative residual of ``1e-12``; with at most ``DENSE_MAX`` parameters (``--quick``) both
come from the dense float64 matrix (``numpy.linalg.eigvalsh`` and ``solve``). Every
row is judged against it (relative error ``||x - x_ref|| / ||x_ref||``) and by its true
relative residual ``||g - (A + lam I) x|| / ||g||``, both computed here in float64.

jaxhvp rows (float32, one right-hand side, each a ``jax.jit``-compiled function of the
operator, ``g`` and ``lam``; compilation is timed apart; time and products include building
the preconditioner or the eigenspace): ``jaxhvp.solve`` with ``cg`` (tolerance ``TOL`` for
every method that has one), ``cg`` with a Jacobi preconditioner from a Hutchinson diagonal
(``PROBES`` probes; for the GGN also from the exact diagonal), ``cg`` with a rank-``RANK``
Nyström preconditioner (of ``H + lam I`` too, for the indefinite Hessian), ``minres``,
``lissa`` (depth ``LISSA_DEPTH``; the operator over ``LISSA_BATCHES`` batches of the same
data, each step one batch; ``scale`` 1.1 times the largest top eigenvalue of any one batch's
``A + lam I``, as ``jaxhvp.solve`` asks, and, for comparison, 1.1 times the top eigenvalue
of the whole ``A + lam I``), and ``lowrank`` (rank ``RANK``).

Peers, in PyTorch on the CPU, with the same right-hand side (moved into the module's
parameter order and back):

* pyDVL (``pydvl.influence.torch.operator``: ``CgOperator``, ``LissaOperator`` and
  ``LowRankOperator`` over ``operator_spectral_approximation``, the solvers of
  ``CgInfluence``, ``LissaInfluence`` and ``ArnoldiInfluence``, on its ``HessianOperator``),
  with jaxhvp's settings: CG to the same relative residual (pyDVL's own rule compares the
  residual norm with ``max(rtol**2 * |b_0|, atol**2)``, so ``atol = sqrt(TOL ||g||)`` and
  ``rtol = 0`` give ``||r|| < TOL ||g||``), LiSSA with the same scale, depth and batch size
  (``rtol = 0``: no early stop), Arnoldi with the same rank, Krylov dimension and tolerance.
  Hessian only: pyDVL's ``GAUSS_NEWTON`` mode is the empirical Fisher (the mean of the
  per-example gradients' outer products), not ``J^T H_L J``, so its GGN rows are skipped.
  pyDVL 0.10 requires ``numpy<2`` (jax needs numpy 2), so it cannot be in the ``bench``
  extra; its code runs with numpy 2. Install it beside the environment and put it on the
  path (zarr, one of its dependencies, registers a pytest plugin: keep it out of the
  environment the tests run in)::

      pip install --no-deps --target /tmp/pydvl pydvl==0.10.0 dask==2026.8.0 \
          distributed==2026.8.0 zarr==3.1.6 numcodecs==0.15.2 donfig==0.8.1.post1 \
          google-crc32c==1.9.0 Deprecated==1.3.1 wrapt==2.5.2 PyYAML==6.0.4 click==8.5.1 \
          cloudpickle==3.1.3 toolz==1.2.0 partd==1.4.2 locket==1.0.0 msgpack==1.2.4 \
          psutil==7.2.2 tblib==3.2.2 tornado==6.6.1 zict==3.0.0 importlib_metadata==10.2.0 \
          zipp==4.1.2 lazy-importer==0.1.0 pyDeprecate==0.14.0 more-itertools==11.2.1 \
          joblib==1.6.0 pandas==3.1.1 scikit-learn==1.9.1 threadpoolctl==3.8.0 \
          narwhals==2.29.0
      PYTHONPATH=/tmp/pydvl python -m bench.inverse

  Without it the pyDVL rows are listed as skipped, with the reason.
* torch-influence: not on PyPI (it installs from its repository, which this benchmark's
  machines cannot reach); listed as skipped.

Each time is the best and the median of up to ``--repeat`` calls after a first (warm-up)
call, fewer when the calls add up to more than the row's time budget; a row whose first
call alone exceeds half the budget reports that call (``n`` = 1). Run from the repository
root::

    python -m bench.inverse [--quick] [--out results]

It writes ``inverse.md`` and ``inverse.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
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
from jax.flatten_util import ravel_pytree

import jaxhvp
import jaxhvp.spectrum as spectrum
from bench import copy_to_docs, problems, report

DAMPING_FACTOR = 1e-3  # lam = DAMPING_FACTOR * lambda_max (after the Hessian's shift)
TOL = 1e-5  # the relative residual every method with a tolerance is asked for
REFERENCE_TOL = 1e-12
EIGEN_TOL = 1e-6  # Lanczos residuals <= 1e-6 lambda_max: errors far below the 1e-3 margin
DENSE_MAX = 5000  # at most this many parameters: a dense float64 reference solve
RANK = 32  # lowrank's eigenpairs and the Nyström preconditioner's rank
PROBES = 32  # Hutchinson probes of the Jacobi preconditioner
LISSA_DEPTH = 500
LISSA_BATCHES = 8
LISSA_SCALE_FACTOR = 1.1
QUICK_WIDTHS, QUICK_BATCH = (32, 16, 16, 10), 64
CURVATURES = ("ggn", "hessian")
TORCH_INFLUENCE_SKIP = (
    "torch-influence is not on PyPI ('pip install torch-influence': no matching "
    "distribution); it installs from its GitHub repository, which is out of reach here"
)
PYDVL_GGN_SKIP = (
    "pyDVL has no GGN: its SecondOrderMode.GAUSS_NEWTON is the empirical Fisher (the mean of "
    "per-example gradient outer products), another matrix"
)


@dataclasses.dataclass
class Setup:
    """One curvature of the problem: the float32 operators, the right-hand side, the damping
    and the float64 reference."""

    curvature: str
    op: Any  # on the whole batch
    batched_op: Any  # the same matrix over LISSA_BATCHES batches (LiSSA's)
    b: Any  # the gradient, float32, in the parameters' structure
    lam: float
    eigen: dict[str, float]  # lambda_max, lambda_min (Hessian), per-batch maxima
    lissa_scales: dict[str, float]
    x_ref: np.ndarray  # flat, float64, ravel_pytree order
    reference: str  # how x_ref was computed
    residual64: Callable[[np.ndarray], float]  # the true relative residual in float64


@dataclasses.dataclass
class Row:
    curvature: str
    impl: str
    framework: str
    status: str
    best_s: float = math.nan
    median_s: float = math.nan
    n: int = 0
    compile_s: float = math.nan
    iterations: int | None = None
    products: int | None = None
    rel_error: float = math.nan
    residual: float = math.nan
    notes: str = ""
    x: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def record(self) -> dict:
        out = dataclasses.asdict(self)
        del out["x"]
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()
        }


# --- the problem -----------------------------------------------------------------------------


def build_problem(quick: bool) -> problems.Problem:
    if quick:
        return problems._mlp(False, batch=QUICK_BATCH, widths=QUICK_WIDTHS)
    return problems.build("mlp", quick=False)


def cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves to ``dtype`` (the labels stay integers), as JAX arrays."""

    def one(x: Any) -> jax.Array:
        floating = np.issubdtype(np.asarray(x).dtype, np.floating)
        return jnp.asarray(x, dtype if floating else None)

    return jax.tree.map(one, tree)


def operator(curvature: str, params: Any, data: Any, batches: Any = None) -> Any:
    """The curvature of the MLP's loss at ``params``, on ``data`` or over ``batches``."""
    if batches is not None:
        if curvature == "ggn":
            return jaxhvp.ggn_operator(
                problems.mlp_model_jax, problems.cross_entropy_jax, params, batches=batches
            )
        return jaxhvp.hessian_operator(problems.mlp_jax, params, batches=batches)
    if curvature == "ggn":
        return jaxhvp.ggn_operator(
            lambda p: problems.mlp_model_jax(p, data),
            lambda out: problems.cross_entropy_jax(out, data),
            params,
        )
    return jaxhvp.hessian_operator(lambda p: problems.mlp_jax(p, data), params)


def split(data: dict, parts: int) -> dict:
    """The data as ``parts`` equal batches, stacked on a leading axis."""
    return jax.tree.map(lambda x: x.reshape(parts, -1, *x.shape[1:]), data)


def flat(tree: Any) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def top(op: Any, tol: float, which: str = "largest") -> float:
    eig = spectrum.eigenvalues(op, key=jax.random.key(0), which=which, tol=tol, max_matvecs=5000)
    if not bool(eig.converged[0]):
        raise RuntimeError(f"eigenvalue ({which}) did not converge: {eig}")
    return float(eig.values[0])


def prepare(problem: problems.Problem, curvature: str) -> Setup:
    """Operators, damping, LiSSA scales and the float64 reference of one curvature."""
    params, data = cast(problem.params, jnp.float32), cast(problem.data, jnp.float32)
    op = operator(curvature, params, data)
    batched_op = operator(curvature, params, data, split(data, LISSA_BATCHES))
    b = op.grad
    with jax.enable_x64(True):
        params64, data64 = cast(problem.params, jnp.float64), cast(problem.data, jnp.float64)
        op64 = operator(curvature, params64, data64)
        b64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), b)
        flat_b, unravel = ravel_pytree(b64)
        product = jax.jit(lambda o, v, d: ravel_pytree(o @ unravel(v))[0] + d * v)
        n = flat_b.size
        if n <= DENSE_MAX:  # eigenvalues and reference from the dense matrix
            eye = jnp.eye(n, dtype=jnp.float64)
            matrix = np.asarray(jax.vmap(lambda e: product(op64, e, 0.0), out_axes=1)(eye))
            matrix = 0.5 * (matrix + matrix.T)
            values = np.linalg.eigvalsh(matrix)
            eigen = {"lambda_max": float(values[-1]), "lambda_min": float(values[0])}
            lam = damping(curvature, eigen)
            x_ref = np.linalg.solve(matrix + lam * np.eye(n), np.asarray(flat_b))
            reference = "dense float64 numpy.linalg.solve (eigenvalues: numpy.linalg.eigvalsh)"
        else:
            eigen = {"lambda_max": top(op64, EIGEN_TOL)}
            if curvature == "hessian":
                eigen["lambda_min"] = top(op64, EIGEN_TOL, which="smallest")
            lam = damping(curvature, eigen)
            x64, info = jax.jit(
                lambda o, v, d: jaxhvp.solve(o, v, damping=d, tol=REFERENCE_TOL, maxiter=20 * n)
            )(op64, b64, lam)
            if int(info.status) != 0:
                raise RuntimeError(f"the float64 reference solve failed: {info}")
            x_ref = flat(x64)
            reference = f"float64 CG, {int(info.iterations)} iterations"

        def residual64(x: np.ndarray) -> float:
            with jax.enable_x64(True):
                r = np.asarray(flat_b) - np.asarray(product(op64, jnp.asarray(x, jnp.float64), lam))
            return float(np.linalg.norm(r) / np.linalg.norm(flat_b))

        reference += f", relative residual {residual64(x_ref):.1e}"
    # LiSSA's scale: above the top eigenvalue of every batch's A + lam I (float32 estimates).
    eigen["batch_lambda_max"] = float(jnp.max(batch_tops(curvature, params, data)))
    scales = {
        "largest batch": LISSA_SCALE_FACTOR * (eigen["batch_lambda_max"] + lam),
        "whole batch": LISSA_SCALE_FACTOR * (eigen["lambda_max"] + lam),
    }
    return Setup(curvature, op, batched_op, b, lam, eigen, scales, x_ref, reference, residual64)


def damping(curvature: str, eigen: dict[str, float]) -> float:
    """``1e-3 lambda_max``, after shifting an indefinite Hessian to ``lambda_min = 0``."""
    shift = max(-eigen["lambda_min"], 0.0) if curvature == "hessian" else 0.0
    return shift + DAMPING_FACTOR * eigen["lambda_max"]


@functools.partial(jax.jit, static_argnums=0)
def batch_tops(curvature: str, params: Any, data: Any) -> jax.Array:
    """The top eigenvalue of each of the LISSA_BATCHES batches' curvatures (tol 1e-3)."""

    def one(batch: Any) -> jax.Array:
        eig = spectrum.eigenvalues(
            operator(curvature, params, batch), key=jax.random.key(0), tol=1e-3
        )
        return eig.values[0]

    return jax.lax.map(one, split(data, LISSA_BATCHES))


# --- timing ----------------------------------------------------------------------------------


def time_calls(call: Callable[[], Any], repeat: int, budget: float) -> tuple[list[float], Any]:
    """A first call, then up to ``repeat`` timed calls while they add up to under
    ``budget`` seconds. Returns the timed seconds (the first call's alone if it took more
    than half the budget) and the last result."""
    start = time.perf_counter()
    result = call()
    first = time.perf_counter() - start
    if first > budget / 2:
        return [first], result
    times: list[float] = []
    while len(times) < repeat and sum(times) + first < budget:
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return times or [first], result


def fill(row: Row, times: list[float], x: np.ndarray, setup: Setup) -> Row:
    row.best_s, row.median_s, row.n = min(times), statistics.median(times), len(times)
    row.x = x
    if np.all(np.isfinite(x)):
        row.rel_error = float(np.linalg.norm(x - setup.x_ref) / np.linalg.norm(setup.x_ref))
        row.residual = setup.residual64(x)
    return row


# --- jaxhvp ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Method:
    """One jaxhvp row: ``solve(op, b, lam) -> (x, info)`` (a Nyström row also returns its
    sketch's eigenvalues) and the products it spends outside ``info.num_matvecs`` (building
    a preconditioner)."""

    name: str
    solve: Callable
    batched: bool = False  # LiSSA: the operator over batches
    setup_products: int = 0
    notes: str = ""
    core: bool = False  # one of the rows --tiny keeps


def methods(setup: Setup) -> list[Method]:
    key = jax.random.key(1)

    def plain(method: str, **options: Any) -> Callable:
        return lambda op, b, lam: jaxhvp.solve(
            op, b, damping=lam, method=method, tol=TOL, **options
        )

    def jacobi(op: Any, b: Any, lam: Any, **options: Any) -> Any:
        pre = jaxhvp.linalg.diagonal_preconditioner(op, **{"key": key, **options})
        return jaxhvp.solve(op, b, damping=lam, tol=TOL, preconditioner=pre)

    def nystrom(op: Any, b: Any, lam: Any) -> Any:
        pre = jaxhvp.linalg.nystrom_preconditioner(op, RANK, key=key)
        return (*jaxhvp.solve(op, b, damping=lam, tol=TOL, preconditioner=pre), pre.values)

    def nystrom_shifted(op: Any, b: Any, lam: Any) -> Any:
        shifted = op + lam
        pre = jaxhvp.linalg.nystrom_preconditioner(shifted, RANK, key=key)
        x, info = jaxhvp.solve(shifted, b, damping=0.0, tol=TOL, preconditioner=pre)
        return x, info, pre.values - lam

    rows = [
        Method("cg", plain("cg"), core=True),
        Method(
            f"cg + Jacobi (Hutchinson, {PROBES} probes)",
            functools.partial(jacobi, num_probes=PROBES),
            setup_products=PROBES,
        ),
    ]
    if setup.curvature == "ggn":
        rows.append(
            Method(
                "cg + Jacobi (exact diagonal)",
                functools.partial(jacobi, method="exact", key=None),
                notes="most of the time is the exact GGN diagonal, one vjp per output "
                "(batch x classes), not counted in products",
            )
        )
    rows.append(Method(f"cg + Nyström (rank {RANK})", nystrom, setup_products=RANK, core=True))
    if setup.curvature == "hessian":
        rows.append(
            Method(
                f"cg + Nyström of H + lam I (rank {RANK})",
                nystrom_shifted,
                setup_products=RANK,
                notes="Factorises the shifted, positive definite H + lam I.",
            )
        )
    rows.append(Method("minres", plain("minres"), core=True))
    for i, (label, scale) in enumerate(setup.lissa_scales.items()):
        rows.append(
            Method(
                f"lissa (depth {LISSA_DEPTH}, scale 1.1 x {label} top eig.)",
                plain("lissa", scale=scale, maxiter=LISSA_DEPTH),
                batched=True,
                notes=f"scale {scale:.4g}; products are one-batch products "
                f"(1/{LISSA_BATCHES} of a full one) but the last (the residual check)",
                core=i == 0,
            )
        )
    rows.append(
        Method(
            f"lowrank (rank {RANK})",
            plain("lowrank", rank=RANK, key=key),
            notes="products: the Lanczos eigensolve",
        )
    )
    return rows


def jaxhvp_rows(setup: Setup, repeat: int, budget: float, tiny: bool = False) -> list[Row]:
    rows = []
    lam = jnp.asarray(setup.lam, jnp.float32)
    for method in methods(setup):
        if tiny and not method.core:
            continue
        op = setup.batched_op if method.batched else setup.op
        row = Row(setup.curvature, f"jaxhvp.solve: {method.name}", "jax", "", notes=method.notes)
        start = time.perf_counter()
        compiled = jax.jit(method.solve).lower(op, setup.b, lam).compile()
        row.compile_s = time.perf_counter() - start

        def call(compiled: Any = compiled, op: Any = op) -> Any:
            return jax.block_until_ready(compiled(op, setup.b, lam))

        times, (x, info, *sketch) = time_calls(call, repeat, budget)
        if sketch:  # the Nyström approximation's eigenvalues, against Lanczos's top one
            values = np.asarray(sketch[0])
            row.notes = " ".join(
                [
                    row.notes,
                    f"Its estimates of A's top {RANK} eigenvalues: {values[0]:.3g} to "
                    f"{values[-1]:.3g} (lambda_max {setup.eigen['lambda_max']:.3g})"
                    if np.all(np.isfinite(values))
                    else "No factorisation: the sketch's Cholesky fails (A is indefinite)",
                ]
            ).strip()
        row.status = jaxhvp.SolveStatus(int(info.status)).name
        row.iterations = int(info.iterations)
        row.products = int(info.num_matvecs) + method.setup_products
        fill(row, times, flat(x), setup)
        if method.batched and row.residual > 1:
            row.notes += "; diverged: the scale is below a batch's top eigenvalue"
        rows.append(row)
        print(f"  {row.impl}: {row.median_s:.3f} s, error {row.rel_error:.2e}", flush=True)
    return rows


# --- pyDVL -----------------------------------------------------------------------------------


def import_pydvl() -> tuple[Any, str | None]:
    """pyDVL's torch influence modules, or None and why not."""
    try:
        with warnings.catch_warnings():  # pyDeprecate warns at import
            warnings.simplefilter("ignore")
            import pydvl
            from pydvl.influence.torch import batch_operation, functional, operator
    except ImportError as error:
        return None, (
            f"pyDVL is not importable ({error}); it pins numpy<2, so install it beside this "
            "environment with pip install --no-deps --target DIR (see bench/inverse.py) "
            "and run with PYTHONPATH=DIR"
        )
    logging.getLogger("pydvl").setLevel(logging.ERROR)
    return (pydvl, operator, batch_operation, functional), None


def pydvl_rows(problem: problems.Problem, setup: Setup, repeat: int, budget: float) -> list[Row]:
    loaded, reason = import_pydvl()
    if setup.curvature == "ggn":
        reason = PYDVL_GGN_SKIP
    if loaded is None or reason:
        return [Row(setup.curvature, "pyDVL", "torch", "skipped", notes=reason or "")]
    pydvl, operator_module, batch_module, functional = loaded
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    modules = problem.torch_modules(problem)
    loss = torch.nn.functional.cross_entropy
    dataset = TensorDataset(modules.X, modules.y)
    whole = DataLoader(dataset, batch_size=len(dataset))
    names = problem.names
    b_dict = {n: np.asarray(setup.b[n]) for n in names}
    b = torch.cat([t.reshape(-1) for t in modules.to_module(b_dict)])
    b_norm = float(b.norm())
    n = b.numel()
    products = [0]

    def counted(target: Any) -> Any:
        """Counts the calls of ``target.apply`` (an instance attribute shadows the method)."""
        original = target.apply

        def apply(*args: Any, **kwargs: Any) -> Any:
            products[0] += 1
            return original(*args, **kwargs)

        target.apply = apply
        return target

    def to_flat(x: torch.Tensor) -> np.ndarray:
        tree = modules.to_problem(modules.unflatten(x.detach().reshape(-1)))
        return np.concatenate([tree[k].cpu().numpy().astype(np.float64).ravel() for k in names])

    hessian = counted(operator_module.HessianOperator(modules.model, loss, whole))
    krylov_dim = min(n, max(20, 2 * RANK + 10))  # jaxhvp's lowrank
    eig_tol = float(np.sqrt(np.finfo(np.float32).eps))  # jaxhvp's lowrank Lanczos tolerance

    def cg() -> torch.Tensor:
        solver = operator_module.CgOperator(
            hessian,
            setup.lam,
            rtol=0.0,
            atol=math.sqrt(TOL * b_norm),
            maxiter=10 * n,
            warn_on_max_iteration=True,
        )
        return solver.apply(b)

    def lissa() -> torch.Tensor:
        torch.manual_seed(0)
        batch_op = counted(batch_module.HessianBatchOperation(modules.model, loss))
        loader = DataLoader(dataset, batch_size=len(dataset) // LISSA_BATCHES)
        solver = operator_module.LissaOperator(
            batch_op,
            loader,
            setup.lam,
            maxiter=LISSA_DEPTH,
            scale=setup.lissa_scales["largest batch"],
            rtol=0.0,
            warn_on_max_iteration=False,
        )
        return solver.apply(b)

    hessian.apply(b)  # a warm-up product, untimed (torch.func's first call)

    def arnoldi() -> torch.Tensor:
        approximation = functional.operator_spectral_approximation(
            hessian, RANK, krylov_dimension=krylov_dim, tol=eig_tol
        )
        return operator_module.LowRankOperator(approximation, setup.lam, exact=False).apply(b)

    cases = [
        ("CgOperator (CgInfluence's solver)", cg, "cg", ""),
        (
            f"LissaOperator (LissaInfluence's), depth {LISSA_DEPTH}",
            lissa,
            "lissa",
            f"scale {setup.lissa_scales['largest batch']:.4g}, batches of "
            f"{len(dataset) // LISSA_BATCHES}; products are one-batch products",
        ),
        (
            f"LowRankOperator over ARPACK (ArnoldiInfluence's), rank {RANK}",
            arnoldi,
            "lowrank",
            f"Krylov dimension {krylov_dim}, tol {eig_tol:.2g}; products: the eigensolve",
        ),
    ]
    rows = []
    for name, solve, kind, notes in cases:
        row = Row(setup.curvature, f"pyDVL {pydvl.__version__} {name}", "torch", "", notes=notes)
        counts: list[int] = []
        caught: list[str] = []

        def call(solve: Callable = solve, counts: list = counts, caught: list = caught) -> Any:
            products[0] = 0
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                out = solve()
            counts.append(products[0])
            caught.extend(str(w.message).splitlines()[0] for w in seen)
            return out

        try:
            times, x = time_calls(call, repeat, budget)
        except Exception as error:  # reported as found
            row.status = f"error: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
            rows.append(row)
            continue
        row.products = counts[-1]
        row.iterations = row.products - 1 if kind == "cg" else row.products
        x_flat = to_flat(x)
        row.status = "returned" if np.all(np.isfinite(x_flat)) else "non-finite"
        if caught:
            row.status += f" (warned: {caught[-1][:80]})"
        rows.append(fill(row, times, x_flat, setup))
        print(f"  {row.impl}: {row.median_s:.3f} s, error {row.rel_error:.2e}", flush=True)
    return rows


# --- report ----------------------------------------------------------------------------------

HEAD = [
    "implementation",
    "best (s)",
    "median (s)",
    "n",
    "compile (s)",
    "iterations",
    "products",
    "rel. error",
    "rel. residual",
    "status",
    "notes",
]


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt)


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in rows:
        cells = [
            r.impl,
            _num(r.best_s, ".3f"),
            _num(r.median_s, ".3f"),
            str(r.n) if r.n else "-",
            _num(r.compile_s, ".2f"),
            _num(r.iterations, "d"),
            _num(r.products, "d"),
            _num(r.rel_error, ".2e"),
            _num(r.residual, ".2e"),
            r.status,
            r.notes,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def markdown(
    problem: problems.Problem, setups: list[Setup], rows: list[Row], meta: dict, options: Any
) -> str:
    out = [
        "# Inverse curvature products: jaxhvp.solve and pyDVL on the benchmark MLP",
        "",
        f"{problem.description}, {problem.size:,} float32 parameters. Machine: {meta['cpu']}, "
        f"{meta['cores']} cores, load average {meta['load_start']:.2f} at the start and "
        f"{meta['load_end']:.2f} at the end; python {meta['python']}, jax {meta['jax']} "
        f"({meta['jax_backend']}), torch {meta['torch']} ({meta['torch_threads']} threads), "
        f"numpy {meta['numpy']}, jaxhvp {meta['jaxhvp']} ({meta['jaxhvp_commit']}), "
        f"pyDVL {meta['pydvl'] or 'not installed'}. Total run time {meta['wall_s']:.0f} s"
        f"{' (--tiny)' if options.tiny else ' (--quick)' if options.quick else ''}.",
        "",
        f"Each row solves (A + lam I) x = g, g the loss gradient, in float32, one right-hand "
        f"side. Time: best and median of up to {options.repeat} calls after a first call "
        f"(n: how many; jaxhvp: jax.jit-compiled, compilation apart), including building the "
        f"preconditioner or eigenspace. Tolerance {TOL:g} on the relative residual where a "
        "method has one. Error and residual are computed in float64 against the reference.",
    ]
    for setup in setups:
        e = setup.eigen
        if setup.curvature == "ggn":
            title = "GGN"
            damping = f"lam = {DAMPING_FACTOR:g} x lambda_max = {setup.lam:.6g}"
        else:
            title = "Hessian"
            damping = (
                f"lambda_min = {e['lambda_min']:.6g}: indefinite; lam = -lambda_min + "
                f"{DAMPING_FACTOR:g} x lambda_max = {setup.lam:.6g}"
            )
        out += [
            "",
            f"## {title}: lambda_max = {e['lambda_max']:.6g}, {damping}",
            "",
            f"Reference: {setup.reference}. Largest top eigenvalue of one of the "
            f"{LISSA_BATCHES} batches: {e['batch_lambda_max']:.6g}; LiSSA scales: "
            + ", ".join(f"{k} {v:.4g}" for k, v in setup.lissa_scales.items())
            + ".",
            "",
            table([r for r in rows if r.curvature == setup.curvature]),
        ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 32-16-16-10 MLP, fewer calls")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="--quick with one timed call and four jaxhvp rows per curvature (cg, cg + "
        "Nyström, minres, one lissa): the smoke test's run",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    parser.add_argument(
        "--docs",
        action="store_true",
        help="also copy inverse.md to docs/bench/",
    )
    parser.add_argument("--repeat", type=int, help="timed calls per row (3; --quick 2)")
    parser.add_argument("--budget", type=float, help="seconds of timed calls per row (20; quick 5)")
    options = parser.parse_args(argv)
    options.quick = options.quick or options.tiny
    options.repeat = options.repeat or (1 if options.tiny else 2 if options.quick else 3)
    options.budget = options.budget or (5.0 if options.quick else 20.0)
    options.out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    problem = build_problem(options.quick)
    print(f"{problem.description}: {problem.size} parameters", flush=True)
    setups, rows = [], []
    for curvature in CURVATURES:
        print(f"{curvature}: eigenvalues and the float64 reference", flush=True)
        setup = prepare(problem, curvature)
        setups.append(setup)
        rows += jaxhvp_rows(setup, options.repeat, options.budget, options.tiny)
        rows += pydvl_rows(problem, setup, options.repeat, options.budget)
        rows.append(
            Row(curvature, "torch-influence", "torch", "skipped", notes=TORCH_INFLUENCE_SKIP)
        )
    loaded, _ = import_pydvl()
    meta = {
        **report.machine_info(torch.get_num_threads()),
        "torch_threads": torch.get_num_threads(),
        "pydvl": loaded[0].__version__ if loaded else None,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "wall_s": time.perf_counter() - started,
        "quick": options.quick,
        "tiny": options.tiny,
    }
    text = markdown(problem, setups, rows, meta, options)
    (options.out / "inverse.md").write_text(text)
    if options.docs:
        copy_to_docs(options.out / "inverse.md")
    problems_meta = {
        s.curvature: {
            "lam": s.lam,
            "eigenvalues": s.eigen,
            "lissa_scales": s.lissa_scales,
            "reference": s.reference,
        }
        for s in setups
    }
    payload = {"meta": meta, "problem": problem.description, "curvatures": problems_meta}
    payload["rows"] = [r.record() for r in rows]
    (options.out / "inverse.json").write_text(json.dumps(payload, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
