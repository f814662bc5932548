"""jaxhvp in multi-process ``jax.distributed`` programs.

``mode="auto"`` must choose the same composition in every process that runs a call on arrays
spanning processes (else their programs differ): the first tests check the mechanism in this
process, with the processes faked; the last runs two real processes on localhost
(tests/multiprocess_worker.py) and checks that they agree with each other and with this
process on the same global problem.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import multiprocess_worker as worker
import numpy as np
import pytest
from conftest import assert_trees_close
from jax.flatten_util import ravel_pytree

import jaxhvp
from jaxhvp._eager import _auto
from jaxhvp._modes import MODES

WORKER_TIMEOUT_S = 300


# --- mode="auto" with several processes, faked in this one -----------------------------------


def _loss(params):
    return jnp.sum(jnp.sin(params["w"]) ** 2) + jnp.sum(params["w"] ** 3) * params["b"][0]


def _point(size):
    params = {"w": jnp.linspace(0.1, 1.0, size), "b": jnp.array([0.5, -0.25])}
    v = {"w": jnp.linspace(-1.0, 1.0, size), "b": jnp.array([1.0, 2.0])}
    return params, v


def _dense_product(params, v):
    flat, unravel = ravel_pytree(params)
    hessian = jax.hessian(lambda x: _loss(unravel(x)))(flat)
    return unravel(hessian @ ravel_pytree(v)[0])


@pytest.fixture
def processes(monkeypatch):
    """A fake multi-process program: ``jax.process_count()`` is 2, this process times as
    ``local`` says and the first process's choice is ``first`` (set them in the test); calls
    span processes while ``spanning`` is true. Records what ``agree`` is given."""
    fake = type("Processes", (), {})()
    fake.local, fake.first, fake.spanning, fake.agreed, fake.timed = "rev-rev", None, True, [], 0
    devices = tuple(jax.devices())

    def fastest(timed, run):
        fake.timed += 1
        return MODES[fake.local]

    def agree(chosen, on):
        fake.agreed.append((chosen, on))
        return MODES[fake.first]

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(_auto, "fastest", fastest)
    monkeypatch.setattr(_auto, "agree", agree)
    monkeypatch.setattr(_auto, "spanned_devices", lambda tree: devices if fake.spanning else ())
    monkeypatch.setattr(_auto, "_choices", type(_auto._choices)())  # none made yet
    return fake


@pytest.mark.parametrize("entry", ["hvp", "hessian_operator"])
def test_auto_takes_the_first_process_choice_for_calls_spanning_processes(processes, entry):
    processes.first = "rev-fwd"
    params, v = _point(3 if entry == "hvp" else 4)  # shapes of its own: a new signature
    modes = []

    def product(params, v):
        if entry == "hvp":
            return jaxhvp.hvp(_loss, params, v, mode="auto")[1]
        op = jaxhvp.hessian_operator(_loss, params, mode="auto")
        modes.append(op.mode)
        return op(v)

    expected = _dense_product(params, v)
    assert_trees_close(product(params, v), expected)
    assert processes.agreed == [(MODES["rev-rev"], tuple(jax.devices()))]  # its own choice
    assert_trees_close(product(params, v), expected)
    assert_trees_close(jax.jit(product)(params, v), expected)
    assert len(processes.agreed) == 1  # decided once, then reused eagerly and under jit
    if entry == "hessian_operator":
        assert modes[1:] == ["rev-fwd"] * 2  # the first call may run before the choice


def test_auto_takes_fwd_rev_untimed_for_process_local_calls(processes):
    processes.spanning = False
    params, v = _point(5)
    for _ in range(2):  # the first call may run before the choice (with the default)
        op = jaxhvp.hessian_operator(_loss, params, mode="auto")
    assert op.mode == "fwd-rev"
    assert_trees_close(op(v), _dense_product(params, v))
    assert (processes.timed, processes.agreed) == (0, [])


def test_auto_in_one_process_times_and_agrees_with_no_one(processes, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    processes.spanning, processes.local = False, "rev-fwd"
    params, v = _point(6)
    for _ in range(2):  # the first call may run before the choice (with the default)
        op = jaxhvp.hessian_operator(_loss, params, mode="auto")
    assert op.mode == "rev-fwd"
    assert_trees_close(op(v), _dense_product(params, v))
    assert (processes.timed, processes.agreed) == (1, [])


def test_spanned_devices_of_arrays_one_process_holds_is_empty():
    params, v = _point(3)
    assert _auto.spanned_devices((params, v, 1.0, None)) == ()


@pytest.mark.parametrize("mode", MODES)
def test_agree_over_one_process_keeps_its_choice(mode):
    assert _auto.agree(MODES[mode], jax.devices()[:1]) is MODES[mode]


# --- two processes on localhost ----------------------------------------------------------------

_IMPORT_THEN_INITIALIZE = """
import importlib.util, sys
import jax
import jaxhvp, jaxhvp.linalg, jaxhvp.operators, jaxhvp.optimize, jaxhvp.spectrum
if importlib.util.find_spec("optax"):
    import jaxhvp.optax
jax.distributed.initialize(f"localhost:{sys.argv[1]}", num_processes=1, process_id=0)
out, hv = jaxhvp.hvp(lambda x: (x**3).sum(), jax.numpy.ones(2), jax.numpy.ones(2))
assert hv.tolist() == [6.0, 6.0], hv
jax.distributed.shutdown()
"""


def test_importing_jaxhvp_leaves_jax_distributed_initialize_possible():
    """``jax.distributed.initialize`` must come before JAX starts its backend; a program
    imports jaxhvp first, so importing it must not start the backend."""
    command = [sys.executable, "-c", _IMPORT_THEN_INITIALIZE, str(_free_port())]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_workers(out):
    script = Path(worker.__file__)
    return _spawn(out, lambda i, port: [str(script), str(i), str(port), str(out)])


def _spawn(out, arguments, cwd=None):
    """Starts the processes ``python *arguments(i, port)``, 4 CPU devices each, logging to
    ``out/process{i}.log``."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={worker.LOCAL_DEVICES}")
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
    port = _free_port()
    logs = [out / f"process{i}.log" for i in range(worker.NUM_PROCESSES)]
    processes = []
    for i, log in enumerate(logs):
        with log.open("w") as stream:
            command = [sys.executable, *arguments(i, port)]
            processes.append(
                subprocess.Popen(command, cwd=cwd, env=env, stdout=stream, stderr=subprocess.STDOUT)
            )
    return processes, logs


def _wait(processes, logs, deadline):
    """Waits for the workers until ``deadline``; if one fails or time runs out, kills them
    all and fails with their output."""
    failed = None
    while failed is None and any(p.poll() is None for p in processes):
        if any(p.returncode not in (None, 0) for p in processes):
            failed = "a worker failed"
        elif time.monotonic() > deadline:
            failed = f"the workers did not finish in {WORKER_TIMEOUT_S} s"
        time.sleep(0.2)
    if failed is None and any(p.returncode != 0 for p in processes):
        failed = "a worker failed"
    if failed:
        for process in processes:
            process.kill()
            process.wait()
        output = "\n".join(f"--- {log.name}\n{log.read_text()[-6000:]}" for log in logs)
        pytest.fail(f"{failed}:\n{output}")


@pytest.mark.slow
def test_two_processes_agree_with_each_other_and_with_one(tmp_path):
    processes, logs = _start_workers(tmp_path)
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:  # the reference, here on one device, while the workers run
        glob = jax.tree_util.tree_map(jnp.asarray, worker.problem())
        names = [name for name in worker.CASES if name not in worker.SAME_AS]
        reference = worker.run_cases(glob["params"], glob["v"], glob["data"], names, jit=False)
    finally:
        _wait(processes, logs, deadline)
    reference = worker.flatten(reference)
    assert_trees_close(
        {k: v for k, v in reference.items() if k.startswith("hvp/['product']")},
        worker.flatten({"hvp": {"product": _dense(glob)}}),
    )
    expected = {}
    for name in worker.CASES:
        source = worker.SAME_AS.get(name, name)
        jit = () if name in worker.EAGER_ONLY else (f"{name}:jit",)
        for variant in (name, *jit):
            for key, value in reference.items():
                if key.startswith(source + "/"):
                    expected[variant + key[len(source) :]] = value

    results = [dict(np.load(tmp_path / f"process{i}.npz")) for i in range(2)]
    assert_trees_close(results[0], results[1], rtol=0, atol=0)  # bitwise the same
    assert_trees_close(results[0], expected, rtol=1e-8, atol=1e-10)
    said = [json.loads((tmp_path / f"process{i}.json").read_text()) for i in range(2)]
    for i in range(2):  # process 0's choice, eagerly and in jit
        assert said[i]["auto_modes"] == [worker.LOCAL_AUTO_CHOICES[0]] * 2
    # loaders that differ between the processes: the same error in both, no hang
    assert said[0]["stream_mismatches"] == said[1]["stream_mismatches"]
    mismatches = said[0]["stream_mismatches"]
    assert "at batch 2 process(es) [1] had no batch 2" in mismatches["count"]
    assert "at batch 1 their shapes differ" in mismatches["shape"]


def _dense(glob):
    params, v, data = glob["params"], glob["v"], glob["data"]
    flat, unravel = ravel_pytree(params)
    hessian = jax.hessian(lambda p: worker.loss(unravel(p), data["x"], data["y"]))(flat)
    return unravel(hessian @ ravel_pytree(v)[0])


@pytest.mark.slow
def test_the_documented_multihost_program_runs(tmp_path):
    """docs/sharding.md's complete two-process program, run as written."""
    page = (Path(__file__).parents[1] / "docs" / "sharding.md").read_text()
    script = re.search(r'^```python title="multihost.py"\n(.*?)^```', page, re.S | re.M)[1]
    (tmp_path / "multihost.py").write_text(script)
    processes, logs = _spawn(
        tmp_path, lambda i, port: ["multihost.py", str(i), str(port)], tmp_path
    )
    _wait(processes, logs, time.monotonic() + WORKER_TIMEOUT_S)
    assert re.search(r"solve: .*; top eigenvalue \d+\.\d{4}", logs[0].read_text())
