"""Smoke tests of ``python -m bench allocator``: outputs only, never how fast.

The quick suite runs in a subprocess, as a user runs it: its children must start with the
malloc variables of their setting, which glibc reads when a process starts.
"""

import argparse
import json
import math
import os

import pytest
from bench_runs import ROOT, quick_outputs

from bench import allocator

ROWS = list(allocator.ROWS)
GIB = str(1 << 30)
SETTINGS = {
    "default": {},
    "MALLOC_TRIM_THRESHOLD_ only": {"MALLOC_TRIM_THRESHOLD_": GIB},
    "MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_": {
        "MALLOC_MMAP_THRESHOLD_": GIB,
        "MALLOC_TRIM_THRESHOLD_": GIB,
    },
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return quick_outputs(tmp_path_factory, "allocator")


def test_quick_suite_writes_every_setting_and_row(quick_run):
    out, printed = quick_run
    payload = json.loads((out / "allocator.json").read_text())
    text = (out / "allocator.md").read_text()
    assert printed.strip() == text.strip()
    meta = payload["meta"]
    assert {"cpu", "threads", "jax", "jaxlib", "torch", "jax_backend"} <= set(meta["machine"])
    config = meta["config"]
    assert config["quick"] and config["repeats"] == 1
    assert config["target_s"] == 0.05 and config["min_rounds"] == 3
    if config["not_run"]:  # off Linux with glibc, or off the CPU: one line, no numbers
        assert text.count("\n") == 1 and "not run" in text
        assert payload["summary"] == {}
        return
    assert config["settings"] == SETTINGS
    assert list(payload["summary"]) == list(SETTINGS) == list(payload["runs"])
    for setting, variables in SETTINGS.items():
        (child,) = payload["runs"][setting]  # --quick: one process per setting
        assert child["setting"] == setting
        expected = {name: variables.get(name) for name in allocator.VARIABLES}
        assert child["env"] == expected  # what the child saw
        assert list(child["rows"]) == ROWS
        for timing in child["rows"].values():
            assert timing["rounds"] >= 3
            assert all(math.isfinite(t) and t > 0 for t in timing["rounds_s"])
            assert 0 < timing["p25_s"] <= timing["median_s"] <= timing["p75_s"] < math.inf
        for row in ROWS:
            found = payload["summary"][setting][row]
            assert 0 < found["median_s"] < math.inf
            assert found["median_s"] == child["rows"][row]["median_s"]
            assert found["faults_per_call"] >= 0
    assert allocator.table(payload["summary"]) in text
    lines = text.splitlines()
    (head,) = [line for line in lines if line.startswith("| row |")]
    for setting in SETTINGS:
        assert f"| {setting} ms | {setting} faults / call |" in head
    assert head.endswith("| both / default |")
    for row in ROWS:
        (line,) = [line for line in lines if line.startswith(f"| {row} |")]
        cells = line.strip("|").split("|")
        assert len(cells) == 2 + 2 * len(SETTINGS)
        assert 0 < float(cells[-1]) < math.inf


def test_child_environment_has_exactly_its_variables():
    base = {"MALLOC_TRIM_THRESHOLD_": "5", "MALLOC_MMAP_THRESHOLD_": "7", "HOME": "/h"}
    for setting, variables in SETTINGS.items():
        env = allocator.child_env(setting, base)
        assert env["HOME"] == "/h"
        assert {name: env.get(name) for name in allocator.VARIABLES} == {
            name: variables.get(name) for name in allocator.VARIABLES
        }
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert base["MALLOC_TRIM_THRESHOLD_"] == "5"  # the base is left alone


def test_settings_are_interleaved():
    names = list(SETTINGS)
    assert allocator.schedule(1) == names
    assert allocator.schedule(2) == names + names


def test_child_command_passes_the_options():
    options = argparse.Namespace(quick=True, threads=2, target_time=0.05, min_rounds=3)
    command = allocator.child_command("default", options)
    assert command[1:5] == ["-m", "bench.allocator", "--child", "default"]
    parsed = allocator.parse_args(command[3:])
    assert (parsed.child, parsed.quick, parsed.threads) == ("default", True, 2)
    assert (parsed.target_time, parsed.min_rounds) == (0.05, 3)


def test_defaults():
    full, quick = allocator.parse_args([]), allocator.parse_args(["--quick"])
    assert (full.repeats, full.target_time, full.min_rounds) == (2, 1.0, 10)
    assert (quick.repeats, quick.target_time, quick.min_rounds) == (1, 0.05, 3)


def test_summary_takes_the_median_over_processes():
    def child(ms: float, faults: float) -> dict:
        timing = {"median_s": ms / 1e3, "faults_per_call": faults}
        return {"rows": dict.fromkeys(ROWS, timing)}

    runs = {
        "default": [child(10.0, 100.0), child(30.0, 300.0), child(20.0, 200.0)],
        "MALLOC_TRIM_THRESHOLD_ only": [child(40.0, 50.0)],
        "MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_": [child(5.0, 0.0)],
    }
    summary = allocator.summarize(runs)
    assert summary["default"]["jax.grad"]["median_s"] == pytest.approx(0.02)
    assert summary["default"]["jax.grad"]["faults_per_call"] == 200.0
    assert summary["default"]["jax.grad"]["process_medians_s"] == [0.01, 0.03, 0.02]
    line = allocator.table(summary).splitlines()[2]
    assert line == "| jaxhvp.hvp | 20.000 | 200.0 | 40.000 | 50.0 | 5.000 | 0.0 | 0.25 |"


def test_not_run_is_one_line():
    meta = {"machine": {}, "config": {"not_run": "JAX's backend is gpu, not cpu"}}
    text = allocator.markdown({"meta": meta, "summary": {}, "runs": {}})
    assert text.count("\n") == 1
    assert "not run, JAX's backend is gpu, not cpu" in text
