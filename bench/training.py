r"""Training a small MLP with Adam and with jaxhvp's second-order optax transformations.

The problem, generated here with ``jax.random``: ``POINTS`` points of a ``CLASSES``-arm 2-D
spiral (the class is the arm; radius and angle noise make the arms overlap a little), lifted
linearly to ``FEATURES`` features with a fixed random map, plus small isotropic noise, then
standardised. The model: an MLP ``FEATURES``-64-64-``CLASSES`` with tanh, cross-entropy on
the logits. Every method starts from the same initial weights and sees the same minibatches
(a fresh permutation of the data each epoch, ``BATCH`` points per step):

* ``optax.adam``;
* ``jaxhvp.optax.sophia`` with ``estimator="hutchinson"`` (Sophia-H: one Hessian-vector
  product every ``update_interval = 10`` steps) and ``estimator="gauss-newton-bartlett"``
  (Sophia-G: one sampled-label gradient every 10 steps), ``weight_decay=0``;
* ``jaxhvp.optax.adahessian`` (one Hessian-vector product per step);
* ``jaxhvp.optax.hessian_free`` with the GGN (``learning_rate=1``, Levenberg-Marquardt
  damping, at most 50 CG steps), at ``HF_BATCH = 1024`` points per step: a CG solve on a
  batch of 256 fits that batch's noise; Martens (2010) uses large batches too. So it takes 4
  times fewer steps per epoch.

Each method's main hyperparameter is tuned over a small grid (the learning rate; for
Hessian-free the initial damping) and the best run (lowest final training loss) is reported;
every run of the grid is listed. Each step is one ``jax.jit``-compiled function (the
gradient, the optimizer's update and ``optax.apply_updates``; the learning rate is an
argument, so one compilation serves the grid); compilation is timed apart. The training
loss on the whole data set is measured every 1024 points seen (every 4 steps at batch 256,
every step of Hessian-free), outside the timed region; the wall-time axis adds up the steps'
times only (each step waited on). Run from the repository root::

    python -m bench.training [--quick] [--out results]

It writes ``training.md``, ``training.json`` and ``training.png`` (loss against step and
against wall time) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxhvp.optax
from bench import copy_to_docs, report

POINTS, FEATURES, CLASSES = 4096, 32, 10
WIDTHS = (FEATURES, 64, 64, CLASSES)
BATCH, HF_BATCH = 256, 1024
EVAL_EVERY = 1024  # points seen between two measurements of the training loss
EPOCHS, QUICK_EPOCHS = 100, 4
QUICK_POINTS = 1024


@dataclasses.dataclass(frozen=True)
class Method:
    """An optimizer: ``make(value)`` builds it for a grid value of ``knob``; ``extra(x, y)``
    gives ``update``'s extra arguments for a batch (``obj_fn``, ``model_fn``, ``loss_fn``)."""

    name: str
    make: Callable[[Any], optax.GradientTransformation]
    knob: str
    grid: tuple[float, ...]
    quick_grid: tuple[float, ...]
    extra: Callable[[Any, Any], dict]
    batch: int = BATCH
    knob_in_state: bool = False  # the grid value sets the initial state, not the update


# --- the problem -----------------------------------------------------------------------------


def make_data(points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ``CLASSES``-arm spiral in 2-D, lifted to ``FEATURES`` features and standardised."""
    keys = jax.random.split(jax.random.key(seed), 5)
    labels = jnp.arange(points) % CLASSES
    radius = jnp.sqrt(jax.random.uniform(keys[0], (points,)))
    angle = (
        2 * jnp.pi * labels / CLASSES + 4.0 * radius + 0.15 * jax.random.normal(keys[1], (points,))
    )
    plane = radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    plane = plane + 0.02 * jax.random.normal(keys[2], plane.shape)
    lift = jax.random.normal(keys[3], (2, FEATURES))
    x = plane @ lift + 0.05 * jax.random.normal(keys[4], (points, FEATURES))
    x = (x - x.mean(0)) / x.std(0)
    return np.asarray(x, np.float32), np.asarray(labels, np.int32)


def init_params(seed: int = 1) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), len(WIDTHS) - 1)
    params = {}
    for i, (a, b) in enumerate(itertools.pairwise(WIDTHS)):
        params[f"w{i}"] = jax.random.normal(keys[i], (a, b)) / math.sqrt(a)
        params[f"b{i}"] = jnp.zeros(b)
    return params


def model(params: dict, x: jax.Array) -> jax.Array:
    h = x
    for i in range(len(WIDTHS) - 1):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        h = jnp.tanh(h) if i < len(WIDTHS) - 2 else h
    return h


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return cross_entropy(model(params, x), y)


# --- the methods -----------------------------------------------------------------------------


def _objective(x: Any, y: Any) -> dict:
    return {"obj_fn": lambda p: loss(p, x, y)}


METHODS = [
    Method(
        "adam",
        lambda lr: optax.adam(lr),
        "learning rate",
        (1e-3, 3e-3, 1e-2, 3e-2),
        (1e-2,),
        lambda x, y: {},
    ),
    Method(
        "sophia (hutchinson)",
        lambda lr: jaxhvp.optax.sophia(lr, weight_decay=0.0, estimator="hutchinson"),
        "learning rate",
        (3e-4, 1e-3, 3e-3, 1e-2),
        (1e-2,),
        _objective,
    ),
    Method(
        "sophia (gauss-newton-bartlett)",
        lambda lr: jaxhvp.optax.sophia(lr, weight_decay=0.0, estimator="gauss-newton-bartlett"),
        "learning rate",
        (3e-4, 1e-3, 3e-3, 1e-2),
        (1e-2,),
        lambda x, y: {"model_fn": lambda p: model(p, x)},
    ),
    Method(
        "adahessian",
        lambda lr: jaxhvp.optax.adahessian(lr),
        "learning rate",
        (0.03, 0.1, 0.3, 1.0),
        (0.1,),
        _objective,
    ),
    Method(
        f"hessian_free (GGN, batch {HF_BATCH})",
        lambda damping: jaxhvp.optax.hessian_free(damping=damping),
        "initial damping",
        (1e-4, 1e-3, 1e-2, 0.1, 1.0),
        (0.1,),
        lambda x, y: {
            "model_fn": lambda p: model(p, x),
            "loss_fn": lambda out: cross_entropy(out, y),
        },
        batch=HF_BATCH,
        knob_in_state=True,
    ),
]


def make_step(method: Method) -> Callable:
    """``step(params, state, x, y, value) -> (params, state)``, for ``jax.jit``."""

    def step(params: dict, state: Any, x: jax.Array, y: jax.Array, value: jax.Array) -> Any:
        grads = jax.grad(loss)(params, x, y)
        opt = method.make(1.0 if method.knob_in_state else value)
        updates, state = opt.update(grads, state, params, **method.extra(x, y))
        return optax.apply_updates(params, updates), state

    return step


# --- one run ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    method: str
    knob: str
    value: float
    batch: int
    compile_s: float
    steps: list[int] = dataclasses.field(default_factory=list)  # where the loss was measured
    epochs: list[float] = dataclasses.field(default_factory=list)
    wall_s: list[float] = dataclasses.field(default_factory=list)  # steps' time up to there
    loss: list[float] = dataclasses.field(default_factory=list)
    step_times: list[float] = dataclasses.field(default_factory=list, repr=False)
    diverged: bool = False

    @property
    def final(self) -> float:
        return self.loss[-1] if not self.diverged else math.inf

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_times) if self.step_times else math.nan

    def loss_at(self, *, epoch: float | None = None, wall: float | None = None) -> float:
        """The last measured loss at or before ``epoch`` (or ``wall`` seconds)."""
        axis, limit = (self.epochs, epoch) if epoch is not None else (self.wall_s, wall)
        found = [v for a, v in zip(axis, self.loss) if a <= limit + 1e-9]
        return found[-1] if found else math.nan

    def reached(self, target: float) -> tuple[float, float]:
        """The first (epoch, wall time) at which the measured loss is at most ``target``."""
        for epoch, wall, value in zip(self.epochs, self.wall_s, self.loss):
            if value <= target:
                return epoch, wall
        return math.nan, math.nan

    def record(self) -> dict:
        out = dataclasses.asdict(self)
        out["median_step_s"] = self.median_step_s
        out["total_train_s"] = self.wall_s[-1] if self.wall_s else math.nan
        del out["step_times"]
        return out


def train(
    method: Method,
    compiled: Any,
    value: float,
    data: tuple[np.ndarray, np.ndarray],
    epochs: int,
    compile_s: float,
) -> Run:
    x_all, y_all = data
    points = len(y_all)
    full_loss = jax.jit(loss)
    x_dev, y_dev = jnp.asarray(x_all), jnp.asarray(y_all)
    params = init_params()
    state = method.make(value).init(params)
    run = Run(method.name, method.knob, value, method.batch, compile_s)
    run.steps, run.epochs, run.wall_s = [0], [0.0], [0.0]
    run.loss.append(float(full_loss(params, x_dev, y_dev)))
    order = np.random.default_rng(0)
    per_epoch = points // method.batch
    eval_every = max(1, EVAL_EVERY // method.batch)
    argument = jnp.asarray(value, jnp.float32)
    step, elapsed = 0, 0.0
    for epoch in range(epochs):
        permutation = order.permutation(points)  # the same batches for every method
        for i in range(per_epoch):
            index = permutation[i * method.batch : (i + 1) * method.batch]
            xb, yb = jnp.asarray(x_all[index]), jnp.asarray(y_all[index])
            start = time.perf_counter()
            params, state = jax.block_until_ready(compiled(params, state, xb, yb, argument))
            seconds = time.perf_counter() - start
            run.step_times.append(seconds)
            elapsed += seconds
            step += 1
            if step % eval_every == 0:
                value_now = float(full_loss(params, x_dev, y_dev))
                run.steps.append(step)
                run.epochs.append(epoch + (i + 1) / per_epoch)
                run.wall_s.append(elapsed)
                run.loss.append(value_now)
                if not math.isfinite(value_now):
                    run.diverged = True
                    return run
    return run


def run_method(
    method: Method, data: tuple[np.ndarray, np.ndarray], epochs: int, quick: bool
) -> list[Run]:
    x_all, y_all = data
    params = init_params()
    grid = method.quick_grid if quick else method.grid
    state = method.make(grid[0]).init(params)
    xb, yb = jnp.asarray(x_all[: method.batch]), jnp.asarray(y_all[: method.batch])
    start = time.perf_counter()
    compiled = (
        jax.jit(make_step(method))
        .lower(params, state, xb, yb, jnp.asarray(grid[0], jnp.float32))
        .compile()
    )
    compile_s = time.perf_counter() - start
    runs = []
    for value in grid:
        run = train(method, compiled, value, data, epochs, compile_s)
        print(
            f"  {method.name}, {method.knob} {value:g}: final loss {run.final:.4g}, "
            f"{run.median_step_s * 1e3:.2f} ms per step",
            flush=True,
        )
        runs.append(run)
    return runs


# --- report ----------------------------------------------------------------------------------


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def markdown(best: list[Run], runs: list[Run], meta: dict, epochs: int, points: int) -> str:
    marks = sorted({max(1, epochs // 4), max(1, epochs // 2), epochs})
    wall = min(r.wall_s[-1] for r in best if not r.diverged)
    walls = [wall / 4, wall / 2, wall]
    out = [
        "# Training a small MLP: Adam and jaxhvp's second-order optax transformations",
        "",
        f"{CLASSES}-arm spiral, {points} points lifted to {FEATURES} features; MLP "
        f"{'-'.join(map(str, WIDTHS))}, tanh, cross-entropy; {epochs} epochs, batch {BATCH} "
        f"(Hessian-free: {HF_BATCH}); the training loss on all {points} points. Machine: "
        f"{meta['cpu']}, {meta['cores']} cores, load average {meta['load_start']:.2f} at "
        f"the start and {meta['load_end']:.2f} at the end; python {meta['python']}, jax "
        f"{meta['jax']} ({meta['jax_backend']}), optax {meta['optax']}, jaxhvp {meta['jaxhvp']} "
        f"({meta['jaxhvp_commit']}). Total run time {meta['wall_s']:.0f} s"
        f"{' (--quick)' if meta['quick'] else ''}.",
        "",
        "Time per step: the median over the run's steps of one jit-compiled step (gradient, "
        "update, apply), waited on; batching and loss measurements excluded. Train time: "
        "the steps' times added up. Compilation (once per method) apart.",
        "",
        "## Best run of each method",
        "",
        "| method | tuned | steps | final loss | ms per step | train time (s) | compile (s) | "
        + " | ".join(f"loss @ {e} epochs" for e in marks)
        + " | "
        + " | ".join(f"loss @ {w:.2f} s" for w in walls)
        + " |",
        "|" + "---|" * (7 + len(marks) + len(walls)),
    ]
    for r in best:
        at_epochs = [_num(r.loss_at(epoch=e), ".4f") for e in marks]
        at_walls = [_num(r.loss_at(wall=w), ".4f") for w in walls]
        out.append(
            f"| {r.method} | {r.knob} {r.value:g} | {r.steps[-1]} | {_num(r.final, '.4f')} | "
            f"{r.median_step_s * 1e3:.2f} | {r.wall_s[-1]:.2f} | {r.compile_s:.2f} | "
            + " | ".join(at_epochs + at_walls)
            + " |"
        )
    ok = [r for r in best if not r.diverged] or best
    by_epochs = min(ok, key=lambda r: r.loss_at(epoch=epochs))
    by_wall = min(ok, key=lambda r: r.loss_at(wall=wall))
    target = max(r.final for r in ok)  # a loss every (converging) best run reaches
    out += [
        "",
        f"Lowest loss after {epochs} epochs: {by_epochs.method} "
        f"({by_epochs.loss_at(epoch=epochs):.4f}). Lowest loss at {wall:.2f} s of training "
        f"(the fastest method's total): {by_wall.method} ({by_wall.loss_at(wall=wall):.4f}).",
        "",
        f"First measurement at or below loss {target:.4f} (the highest final loss of the "
        "best runs):",
        "",
        "| method | epochs | steps | train time (s) |",
        "|---|---|---|---|",
    ]
    for r in ok:
        epoch, seconds = r.reached(target)
        step = r.steps[r.epochs.index(epoch)] if math.isfinite(epoch) else math.nan
        out.append(
            f"| {r.method} | {_num(epoch, '.2f')} | {_num(step, 'd')} | {_num(seconds, '.2f')} |"
        )
    out += [
        "",
        "## Every run of the grids",
        "",
        "| method | tuned | final loss | ms per step | train time (s) |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        final = "diverged" if r.diverged else f"{r.final:.4f}"
        out.append(
            f"| {r.method} | {r.knob} {r.value:g} | {final} | {r.median_step_s * 1e3:.2f} | "
            f"{r.wall_s[-1]:.2f} |"
        )
    return "\n".join(out) + "\n"


def finite(tree: Any) -> Any:
    """NaN and infinities as None (JSON has neither)."""
    if isinstance(tree, dict):
        return {k: finite(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [finite(v) for v in tree]
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree


def plot(best: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in best:
        label = f"{r.method}, {r.knob} {r.value:g}"
        axes[0].plot(r.steps, r.loss, label=label)
        axes[1].plot(r.wall_s[1:], r.loss[1:], label=label)  # log x: from the first step
    axes[0].set(xlabel="step", ylabel="training loss (all points)", yscale="log")
    axes[1].set(
        xlabel="wall time of the steps, s (log; compilation excluded)", xscale="log", yscale="log"
    )
    axes[0].set_title("loss against step (Hessian-free: batch 1024)", fontsize=9)
    axes[1].set_title("loss against wall time", fontsize=9)
    for ax in axes:
        ax.grid(which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_POINTS} points, {QUICK_EPOCHS} epochs, one grid value per method",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    parser.add_argument(
        "--docs",
        action="store_true",
        help="also copy training.md to docs/bench/",
    )
    parser.add_argument("--epochs", type=int, help=f"epochs ({EPOCHS}; --quick {QUICK_EPOCHS})")
    options = parser.parse_args(argv)
    epochs = options.epochs or (QUICK_EPOCHS if options.quick else EPOCHS)
    points = QUICK_POINTS if options.quick else POINTS
    options.out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    data = make_data(points)
    runs, best = [], []
    for method in METHODS:
        print(method.name, flush=True)
        mine = run_method(method, data, epochs, options.quick)
        runs += mine
        best.append(min(mine, key=lambda r: r.final))
    meta = {
        **report.machine_info(os.cpu_count() or 1),
        "optax": optax.__version__,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "wall_s": time.perf_counter() - started,
        "quick": options.quick,
        "epochs": epochs,
        "points": points,
    }
    text = markdown(best, runs, meta, epochs, points)
    (options.out / "training.md").write_text(text)
    if options.docs:
        copy_to_docs(options.out / "training.md")
    payload = {"meta": meta, "runs": [r.record() for r in runs]}
    payload["best"] = [{"method": r.method, "value": r.value} for r in best]
    (options.out / "training.json").write_text(json.dumps(finite(payload), indent=1, default=str))
    plot(best, options.out / "training.png")
    print(text)


if __name__ == "__main__":
    main()
