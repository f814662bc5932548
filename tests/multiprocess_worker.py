"""One process of the two-process ``jax.distributed`` program of tests/test_multiprocess.py.

Run as ``python tests/multiprocess_worker.py PROCESS_ID PORT OUT_DIR`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``: the two processes build one mesh over
their 8 CPU devices (4 x 2, ``data`` x ``model``), shard a small tanh network's parameters
over ``model`` and its data over ``data`` (each process placing only its own rows, as it
would load them), run every case of ``CASES`` eagerly and inside ``jax.jit``, and save the
results, gathered whole to the host, to ``OUT_DIR/process{PROCESS_ID}.npz`` (and the modes
``mode="auto"`` chose to ``.json``).

Imported, it sets nothing up: the test runs the same cases on the same data in its own
single-device process for the reference.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxhvp
import jaxhvp.spectrum

NUM_PROCESSES, LOCAL_DEVICES = 2, 4
MESH_SHAPE, MESH_AXES = (4, 2), ("data", "model")
ROWS, FEATURES, HIDDEN, NUM_BATCHES = 32, 4, 8, 8
# What each process's own timing of mode="auto" is made to choose (see ``choose_locally``):
# a different mode in each, as timing noise may make it; process 0's must be the one used.
LOCAL_AUTO_CHOICES = ("rev-rev", "rev-fwd")


def problem() -> dict[str, Any]:
    """The global parameters, vector and data (numpy, float64): the same in every process."""
    rng = np.random.default_rng(0)
    params = {
        "w": rng.normal(size=(FEATURES, HIDDEN)) / 2,
        "b": rng.normal(size=HIDDEN) / 4,
        "u": rng.normal(size=HIDDEN) / 2,
    }
    v = {name: rng.normal(size=p.shape) for name, p in params.items()}
    x = rng.normal(size=(ROWS, FEATURES))
    y = np.sin(x.sum(axis=1))
    batches = (x.reshape(NUM_BATCHES, -1, FEATURES), y.reshape(NUM_BATCHES, -1))
    return {"params": params, "v": v, "data": {"x": x, "y": y, "batches": batches}}


def model(params: Any, x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ params["w"] + params["b"]) @ params["u"]


def squared_error(out: jax.Array, y: jax.Array) -> jax.Array:
    return 0.5 * jnp.mean((out - y) ** 2)


def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    decay = sum(jnp.sum(p**2) for p in jax.tree_util.tree_leaves(params))
    return squared_error(model(params, x), y) + 5e-3 * decay


def batch_loss(params: Any, batch: tuple) -> jax.Array:
    return loss(params, *batch)


# --- the cases: (params, v, data) -> a pytree of arrays, run eagerly and under jax.jit ------
# The data reach the functions as closures (an eager call finds them in the function).


def hvp(params, v, data):
    value, product = jaxhvp.hvp(lambda p: loss(p, data["x"], data["y"]), params, v)
    return {"value": value, "product": product}


def vhp(params, v, data):
    value, product = jaxhvp.vhp(lambda p: loss(p, data["x"], data["y"]), params, v)
    return {"value": value, "product": product}


def hvp_auto(params, v, data):
    f = lambda p: loss(p, data["x"], data["y"])  # noqa: E731
    value, product = jaxhvp.hvp(f, params, v, mode="auto")
    return {"value": value, "product": product}


def hessian_operator(params, v, data):
    op = jaxhvp.hessian_operator(lambda p: loss(p, data["x"], data["y"]), params)
    return {"value": op.value, "grad": op.grad, "product": op(v)}


def hessian_operator_auto(params, v, data):
    f = lambda p: loss(p, data["x"], data["y"])  # noqa: E731
    op = jaxhvp.hessian_operator(f, params, mode="auto")
    AUTO_MODES.append(op.mode)
    return {"value": op.value, "grad": op.grad, "product": op(v)}


def hessian_operator_batches(params, v, data):
    """The same Hessian as the mean over batches split over ``data`` (one psum a product)."""
    op = jaxhvp.hessian_operator(batch_loss, params, batches=data["batches"])
    return {"value": op.value, "grad": op.grad, "product": op(v)}


def hessian_operator_streamed(params, v, data):
    """The same Hessian again, each process streaming its own rows from a host list in two
    batches, each batch cut over the process's devices on ``data`` (eager only)."""
    x, y = OWN_ROWS["x"], OWN_ROWS["y"]
    half = len(x) // 2
    loader = [(x[:half], y[:half]), (x[half:], y[half:])]
    batches = jaxhvp.operators.stream(loader)
    op = jaxhvp.hessian_operator(batch_loss, params, batches=batches, data_axis="data")
    return {"value": op.value, "grad": op.grad, "product": op(v)}


def stream_mismatches(params: Any) -> dict[str, str]:
    """What a streamed operator says in each process when the processes' loaders differ:
    one more batch in process 0 (``count``); a shorter second batch in process 1
    (``shape``)."""
    x, y = OWN_ROWS["x"], OWN_ROWS["y"]
    first = jax.process_index() == 0
    loaders = {
        "count": [(x[:4], y[:4])] * (3 if first else 2),
        "shape": [(x[:8], y[:8]), (x[:8], y[:8]) if first else (x[:4], y[:4])],
    }
    said = {}
    for name, loader in loaders.items():
        batches = jaxhvp.operators.stream(loader)
        try:
            jaxhvp.hessian_operator(batch_loss, params, batches=batches, data_axis="data")
        except jaxhvp.HVPError as error:
            said[name] = str(error)
    return said


def ggn_operator(params, v, data):
    op = _ggn(params, data)
    return {"value": op.value, "grad": op.grad, "product": op(v)}


def solve(params, v, data):
    solution, info = jaxhvp.solve(_ggn(params, data), v, damping=0.1, tol=1e-12)
    return {"solution": solution, "iterations": info.iterations}


def eigenvalues(params, v, data):
    op = jaxhvp.hessian_operator(lambda p: loss(p, data["x"], data["y"]), params)
    return jaxhvp.spectrum.eigenvalues(op, k=2, key=jax.random.key(0)).values


def trace(params, v, data):
    op = jaxhvp.hessian_operator(lambda p: loss(p, data["x"], data["y"]), params)
    return jaxhvp.spectrum.trace(op, key=jax.random.key(1), num_probes=9).value


def density(params, v, data):
    op = jaxhvp.hessian_operator(lambda p: loss(p, data["x"], data["y"]), params)
    result = jaxhvp.spectrum.density(op, key=jax.random.key(2), num_probes=4, krylov_dim=6)
    return {"nodes": result.nodes, "weights": result.weights}


def diagonal(params, v, data):
    op = jaxhvp.hessian_operator(batch_loss, params, batches=data["batches"])
    return jaxhvp.spectrum.diagonal(op, key=jax.random.key(3), num_probes=4).value


def newton_cg_step(params, v, data):
    f = functools.partial(loss, x=data["x"], y=data["y"])
    new, state, _ = jaxhvp.newton_cg_step(f, params, jaxhvp.newton_cg_init(params))
    return {"params": new, "state": state}


def influence(params, v, data):
    examples = (data["x"], data["y"])
    result = jaxhvp.influence(
        lambda p, e: loss(p, e[0][None], e[1][None]),
        params,
        examples,
        (data["x"][:2], data["y"][:2]),
        damping=0.1,
        batch_size=8,
    )
    return result.values


def minimize(params, v, data):
    args = (data["x"], data["y"])
    result = jaxhvp.minimize(loss, params, args, method="trust-ncg", options={"maxiter": 4})
    return {"x": result.x, "fun": result.fun, "nit": result.nit}


def _ggn(params, data):
    def out(p):
        return model(p, data["x"])

    return jaxhvp.ggn_operator(out, lambda o: squared_error(o, data["y"]), params)


CASES: dict[str, Callable] = {
    case.__name__: case
    for case in [
        hvp,
        vhp,
        hvp_auto,
        hessian_operator,
        hessian_operator_auto,
        hessian_operator_batches,
        hessian_operator_streamed,
        ggn_operator,
        solve,
        eigenvalues,
        trace,
        density,
        diagonal,
        newton_cg_step,
        influence,
        minimize,
    ]
}
# Cases that compute what another case computes, in another way.
SAME_AS = {
    "hvp_auto": "hvp",
    "hessian_operator_auto": "hessian_operator",
    "hessian_operator_batches": "hessian_operator",
    "hessian_operator_streamed": "hessian_operator",
}
EAGER_ONLY = {"hessian_operator_streamed"}  # products read a host iterable: no jax.jit
OWN_ROWS: dict[str, np.ndarray] = {}  # this process's own rows of x and y (set by ``place``)
AUTO_MODES: list[str] = []  # op.mode of hessian_operator_auto, eagerly and as traced


def run_cases(params: Any, v: Any, data: Any, names: list[str], jit: bool) -> dict[str, Any]:
    """Each case eagerly (``name``), and with ``jit`` inside ``jax.jit`` too (``name:jit``)."""
    results = {}
    for name in names:
        results[name] = CASES[name](params, v, data)
        if jit and name not in EAGER_ONLY:
            results[f"{name}:jit"] = jax.jit(CASES[name])(params, v, data)
    return results


def flatten(results: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{"case/path": array}`` of host arrays, as ``np.savez`` takes them."""
    flat = {}
    for name, tree in results.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            flat[name + "/" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    return flat


# --- the process ----------------------------------------------------------------------------


def place(mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """``problem()`` as global arrays: the parameters and vector sharded over ``model``, made
    from their global values; the data split over ``data`` on the leading axis, each process
    giving only its own rows."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    specs = {"w": P(None, "model"), "b": P("model"), "u": P("model")}
    rows = NamedSharding(mesh, P("data"))

    def put(tree: dict) -> dict:
        def one(name: str, value: np.ndarray) -> jax.Array:
            sharding = NamedSharding(mesh, specs[name])
            return jax.make_array_from_callback(value.shape, sharding, lambda i: value[i])

        return {name: one(name, value) for name, value in tree.items()}

    def own(value: np.ndarray) -> np.ndarray:
        mine = rows.addressable_devices_indices_map(value.shape).values()
        return value[min(i[0].start for i in mine) : max(i[0].stop for i in mine)]

    def own_rows(value: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(rows, own(value), value.shape)

    glob = problem()
    OWN_ROWS.update(x=own(glob["data"]["x"]), y=own(glob["data"]["y"]))
    data = jax.tree_util.tree_map(own_rows, glob["data"])
    return {"params": put(glob["params"]), "v": put(glob["v"]), "data": data}


def to_host(tree: Any) -> Any:
    """Host copies of the arrays of ``tree``: arrays spanning processes gathered whole."""
    from jax.experimental import multihost_utils

    def one(leaf: Any) -> np.ndarray:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return multihost_utils.process_allgather(leaf, tiled=True)
        return np.asarray(leaf)

    return jax.tree_util.tree_map(one, tree)


def choose_locally(process_id: int) -> None:
    """Makes this process's own timing for ``mode="auto"`` choose
    ``LOCAL_AUTO_CHOICES[process_id]`` (it times nothing then)."""
    from jaxhvp._eager import _auto
    from jaxhvp._modes import MODES

    _auto.fastest = lambda timed, run: MODES[LOCAL_AUTO_CHOICES[process_id]]


def main(process_id: int, port: int, out: Path) -> None:
    jax.config.update("jax_enable_x64", True)
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}",
        num_processes=NUM_PROCESSES,
        process_id=process_id,
    )
    if (jax.process_count(), jax.local_device_count()) != (NUM_PROCESSES, LOCAL_DEVICES):
        msg = (
            f"expected {NUM_PROCESSES} processes of {LOCAL_DEVICES} devices, got "
            f"{jax.process_count()} of {jax.local_device_count()}: set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
        )
        raise RuntimeError(msg)
    from jax.sharding import AxisType

    mesh = jax.make_mesh(MESH_SHAPE, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    arrays = place(mesh)
    choose_locally(process_id)
    results = run_cases(arrays["params"], arrays["v"], arrays["data"], list(CASES), jit=True)
    np.savez(out / f"process{process_id}.npz", **flatten(to_host(results)))
    said = {"auto_modes": AUTO_MODES, "stream_mismatches": stream_mismatches(arrays["params"])}
    (out / f"process{process_id}.json").write_text(json.dumps(said))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
