"""Smoke tests of ``python -m bench gaps``: outputs and agreement only, never how fast.

The quick suite runs in a subprocess, as a user runs it, so that its thread settings apply
before JAX and torch are imported; so does the one-core process it starts on a full run.
The agreement check and the programs themselves are tested here directly (in this process
float64 is enabled by the conftest: the programs must stay float32 all the same).
"""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from bench_runs import quick_outputs

from bench import gaps

NAMES = [
    "sum",
    "rosenbrock value",
    "rosenbrock product",
    "conv0 forward",
    "conv1 forward",
    "conv0 weight gradient",
    "conv1 weight gradient",
    "matmul",
]
REDUCTIONS = ["sum", "rosenbrock value"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return quick_outputs(tmp_path_factory, "gaps")


def test_quick_suite_writes_every_gap(quick_run):
    out, printed = quick_run
    payload = json.loads((out / "gaps.json").read_text())
    text = (out / "gaps.md").read_text()
    assert printed.strip() == text.strip()
    assert [gap["name"] for gap in payload["gaps"]] == NAMES
    assert {"cpu", "threads", "jax", "jaxlib", "torch", "jax_backend"} <= set(
        payload["meta"]["machine"]
    )
    for gap in payload["gaps"]:
        assert f"| {gap['name']} | {gap['shapes']} |" in text
        assert f"`{gap['name']}`: {gap['isolates']}" in text
        assert set(gap["rows"]) == {gaps.JAX, gaps.EAGER}  # --quick: no torch.compile
        for timing in gap["rows"].values():
            assert timing["rounds"] >= gaps.MIN_ROUNDS_QUICK
            assert all(math.isfinite(t) and t > 0 for t in timing["rounds_s"])
            assert math.isfinite(timing["faults_per_call"])
        assert 0 < gap["jax_over"][gaps.EAGER]["median"] < math.inf
        assert all(err < gaps.RTOL for err in gap["rel_err"].values())
        assert gap["one_core"] is None  # --quick: no one-core process
    config = payload["meta"]["config"]
    assert not config["torch_compile"]
    assert config["one_core"] == "not run (--quick)"
    assert "torch.compile: not run (--quick)." in text


def test_sizes_follow_the_problems():
    by_name = {gap.name: gap for gap in gaps.build(quick=False)}
    assert [gap.name for gap in gaps.build(quick=True)] == list(by_name) == NAMES
    assert by_name["sum"].inputs[0].shape == (gaps.N,)
    x, w = by_name["conv0 forward"].inputs
    assert (x.shape, w.shape) == ((64, 3, 32, 32), (16, 3, 3, 3))
    x, w, g = by_name["conv1 weight gradient"].inputs
    assert (x.shape, w.shape, g.shape) == ((64, 16, 16, 16), (32, 16, 3, 3), (64, 32, 16, 16))
    a, b = by_name["matmul"].inputs
    assert (a.shape, b.shape) == ((512, 128), (128, 512))  # batch 8 x sequence 64, width 128
    assert [name for name, gap in by_name.items() if gap.reduction] == REDUCTIONS
    assert all(x.dtype == np.float32 for gap in by_name.values() for x in gap.inputs)
    with pytest.raises(ValueError, match="no gaps called"):
        gaps.build(quick=True, only=["sum", "nonsense"])


# torch's forward-mode AD loads its jvp decompositions with torch.jit.script, which warns.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_programs_agree_and_stay_float32():
    for gap in gaps.build(quick=True):
        results = {row: call() for row, call in gaps.gap_calls(gap, compiled=False).items()}
        errors = gaps.check_agreement(gap.name, results)
        assert set(errors) == {gaps.EAGER}
        assert errors[gaps.EAGER] < gaps.RTOL, gap.name


def test_check_agreement_refuses_wrong_results():
    right = np.linspace(1.0, 2.0, 5, dtype=np.float32)
    assert gaps.check_agreement("ok", {"a": right, "b": torch.from_numpy(right)}) == {"b": 0.0}
    wrong = right.copy()
    wrong[2] *= 1.01
    with pytest.raises(gaps.DisagreementError, match=r"wrong: b differs from a by 7\.50e-03"):
        gaps.check_agreement("wrong", {"a": right, "b": wrong})
    with pytest.raises(gaps.DisagreementError, match="nan: b differs"):
        gaps.check_agreement("nan", {"a": right, "b": np.full(5, np.nan, np.float32)})
    with pytest.raises(gaps.DisagreementError, match="shape"):
        gaps.check_agreement("shape", {"a": right, "b": right[:4]})
    with pytest.raises(gaps.DisagreementError, match="float64, not float32"):
        gaps.check_agreement("dtype", {"a": right, "b": right.astype(np.float64)})


def test_a_wrong_program_is_not_timed():
    (sum_gap,) = gaps.build(quick=True, only=["sum"])
    wrong = dataclasses.replace(sum_gap, torch_fn=torch.sum)  # forgets to square
    with pytest.raises(gaps.DisagreementError, match="sum: torch eager differs"):
        gaps.measure_gap(wrong, compiled=False, target_s=0.0, min_rounds=1)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_one_core_process():
    command = gaps.one_core_command(REDUCTIONS, quick=True, target_s=0.01, min_rounds=2)
    found = gaps.one_core_timings(command)
    assert list(found) == REDUCTIONS
    for timing in found.values():
        assert len(timing["cores"]) == 1
        assert timing["rounds"] >= 2
        assert 0 < timing["median_s"] < math.inf


def test_table_marks_what_was_not_run():
    timing = {"median_s": 1e-3, "faults_per_call": 0.0}
    ratio = {"median": 1.5, "p25": 1.25, "p75": 1.75}
    common = {"shapes": "x (3,)", "rows": {gaps.JAX: timing, gaps.EAGER: timing}}
    rows = [
        {"name": "r", "reduction": True, "one_core": None, "jax_over": {gaps.EAGER: ratio}},
        {"name": "o", "reduction": False, "one_core": None, "jax_over": {gaps.EAGER: ratio}},
    ]
    lines = gaps.table([{**row, **common} for row in rows], False, "not run (why)").splitlines()
    assert lines[2] == (
        "| r | x (3,) | 1.000 | 1.000 | not run | 1.50 [1.25, 1.75] | not run | 0.0 | not run |"
    )
    assert lines[3].endswith("| 0.0 |  |")  # one core: only for reductions


def test_copy_to_docs(tmp_path):
    md = tmp_path / "gaps.md"
    md.write_text("# table\n")
    copied = gaps.copy_to_docs(md, tmp_path / "docs" / "bench")
    assert copied == tmp_path / "docs" / "bench" / "gaps.md"
    assert copied.read_text() == "# table\n"
