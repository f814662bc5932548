"""The spectral density of a small MLP's loss Hessian, averaged over data batches.

Trains a 4-32-32-3 tanh MLP (1,315 parameters) briefly by full-batch gradient descent on
synthetic data labelled by a random teacher network, then, on the Hessian of the loss over
8 batches of 128 examples (``spectrum.batch_hessian_operator``): the top eigenvalues, the
trace, the top eigenvalue of each layer's block, and the spectral density by stochastic
Lanczos quadrature, plotted to a PNG::

    python examples/spectral_density.py [out.png]   # default examples/spectral_density.png
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported
import matplotlib.pyplot as plt

import jaxhvp.spectrum as spectrum

SIZES = (4, 32, 32, 3)
NUM_BATCHES, BATCH = 8, 128


def init(key: jax.Array, sizes: tuple[int, ...] = SIZES) -> dict:
    params = {}
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        key, sub = jax.random.split(key)
        params[f"layer{i}"] = {"w": jax.random.normal(sub, (a, b)) / a**0.5, "b": jnp.zeros(b)}
    return params


def mlp(params: dict, x: jax.Array) -> jax.Array:
    for i in range(len(params)):
        layer = params[f"layer{i}"]
        x = x @ layer["w"] + layer["b"]
        x = jnp.tanh(x) if i < len(params) - 1 else x
    return x


def loss(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, labels = batch
    logp = jax.nn.log_softmax(mlp(params, x))
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def data(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Batches stacked on a leading axis: x is (8, 128, 4), the labels (8, 128)."""
    x_key, teacher_key = jax.random.split(key)
    x = jax.random.normal(x_key, (NUM_BATCHES, BATCH, SIZES[0]))
    teacher = init(teacher_key, (SIZES[0], 16, SIZES[-1]))
    return x, jnp.argmax(3 * mlp(teacher, x), axis=-1)


@jax.jit
def train(params: dict, batches: tuple, steps: int = 300, rate: float = 0.5) -> dict:
    whole = jax.tree.map(lambda b: b.reshape(-1, *b.shape[2:]), batches)

    def step(params: dict, _: None) -> tuple[dict, None]:
        grad = jax.grad(loss)(params, whole)
        return jax.tree.map(lambda p, g: p - rate * g, params, grad), None

    return jax.lax.scan(step, params, length=steps)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="examples/spectral_density.png", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    init_key, data_key, key = jax.random.split(jax.random.key(0), 3)
    batches = data(data_key)
    params = train(init(init_key), batches)

    op = spectrum.batch_hessian_operator(loss, params, batches)
    top = spectrum.eigenvalues(op, k=5, key=key)
    trace = spectrum.trace(op, key=key, num_probes=90)
    dens = spectrum.density(op, key=key, num_probes=8, krylov_dim=80)
    print(f"loss {float(op.value):.4f}; top eigenvalues {top.values} (converged: {top.converged})")
    print(f"trace {float(trace.value):.3f} ± {float(trace.stderr):.3f} (Hutch++, 90 products)")
    for name in params:
        block = spectrum.batch_hessian_operator(
            loss, params, batches, select=lambda p, name=name: p[name]
        )
        print(f"{name}: top eigenvalue {float(spectrum.eigenvalues(block, key=key).values[0]):.4f}")

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(dens.grid, dens.density, color="tab:green", label="SLQ density")
    for i, value in enumerate(top.values):
        ax.axvline(value, color="tab:red", lw=0.8, ls="--", label="top-5 eigenvalues" * (i == 0))
    ax.set_ylim(1e-4, 3 * float(dens.density.max()))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(
        f"Loss Hessian of a {'-'.join(map(str, SIZES))} MLP over {NUM_BATCHES} batches "
        f"(trace {float(trace.value):.2f} ± {float(trace.stderr):.2f})",
        fontsize=10,
    )
    ax.legend(loc="upper left", bbox_to_anchor=(0.2, 1.0))
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
