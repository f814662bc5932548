"""Smoke test of ``python -m bench.sharding``: outputs, communication and agreement only, never
timings (they depend on the machine, and the devices are simulated on its cores).

The benchmark runs in a subprocess on 4 simulated devices, as a user runs it, on its smallest
setting. What decides the table's collective and byte columns (the HLO parsing) and how the
benchmark starts JAX on N devices are tested directly, on hand-written HLO.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import sharding

ROOT = Path(__file__).resolve().parent.parent
DEVICES = 4
SPLIT = ("jaxhvp, placed batches", "jaxhvp, data_axis", "shard_map + psum")

# One tuple all-reduce in the entry; inside a loop of 3 iterations an all-gather and an async
# all-gather pair (counted once, with the result of -done), and a loop of unknown length.
HLO = """\
HloModule jit_product, entry_computation_layout={(f32[784,512]{1,0}, f32[10]{0})->f32[10]{0}}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add.1 = f32[] add(%x, %y)
}

%body (state: (s32[], f32[8])) -> (s32[], f32[8]) {
  %state = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %x.1 = f32[8]{0} get-tuple-element(%state), index=1
  %all-gather.1 = f32[32]{0} all-gather(%x.1), channel_id=1, replica_groups={{0,1,2,3}}, \
dimensions={0}, use_global_device_ids=true
  %all-gather-start = (f32[8]{0}, f32[32]{0}) all-gather-start(%x.1), channel_id=2, \
replica_groups={{0,1,2,3}}, dimensions={0}
  %all-gather-done = f32[32]{0} all-gather-done(%all-gather-start)
  ROOT %tuple = (s32[], f32[8]{0}) tuple(%i, %x.1)
}

%cond (state.1: (s32[], f32[8])) -> pred[] {
  %state.1 = (s32[], f32[8]{0}) parameter(0)
  %j = s32[] get-tuple-element(%state.1), index=0
  %three = s32[] constant(3)
  ROOT %lt = pred[] compare(%j, %three), direction=LT
}

%body.2 (state.2: (s32[], pred[4])) -> (s32[], pred[4]) {
  %state.2 = (s32[], pred[4]{0}) parameter(0)
  %flags = pred[4]{0} get-tuple-element(%state.2), index=1
  %collective-permute = pred[4]{0} collective-permute(%flags), channel_id=3, \
source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
  ROOT %tuple.2 = (s32[], pred[4]{0}) tuple(%k, %collective-permute)
}

ENTRY %main (p: f32[784,512], q: f32[10]) -> f32[10] {
  %p = f32[784,512]{1,0} parameter(0)
  %q = f32[10]{0} parameter(1)
  %all-reduce = (f32[784,512]{1,0}, f32[10]{0}) all-reduce(%p, %q), channel_id=4, \
replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%add
  %get-tuple-element.3 = f32[10]{0} get-tuple-element(%all-reduce), index=1
  %while = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body, \
backend_config={"known_induction_variable":{"tuple_index":"0"},"known_trip_count":{"n":"3"}}
  %while.2 = (s32[], pred[4]{0}) while(%init.2), condition=%cond, body=%body.2
  ROOT %out = f32[10]{0} copy(%get-tuple-element.3)
}
"""


def test_hlo_stats_counts_collectives_and_their_bytes_per_execution():
    stats = sharding.hlo_stats(HLO)
    assert stats.counts == {
        "all-reduce": 1,
        "all-gather": 2 * 3,  # two per iteration
        "all-to-all": 0,
        "collective-permute": 1,  # in the loop of unknown length: once, and reported
        "reduce-scatter": 0,
    }
    expected = (784 * 512 + 10) * 4 + 3 * 2 * 32 * 4 + 4  # pred: one byte
    assert stats.bytes == expected
    assert stats.unknown_trips == 1
    assert stats.loop_steps == 3


def test_hlo_stats_without_collectives_or_loops():
    hlo = "ENTRY %main (p: f32[3]) -> f32[3] {\n  ROOT %p = f32[3]{0} parameter(0)\n}\n"
    stats = sharding.hlo_stats(hlo)
    assert sum(stats.counts.values()) == stats.bytes == 0
    assert stats.loop_steps == 1


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ("f32[64,10]{1,0}", 64 * 10 * 4),
        ("f32[]", 4),
        ("s32[16,64]{1,0}", 16 * 64 * 4),
        ("bf16[3]{0}", 6),
        ("pred[5]{0}", 5),
        ("(f32[512]{0}, /*index=1*/f32[784,512]{1,0}, s8[2])", 512 * 4 + 784 * 512 * 4 + 2),
    ],
)
def test_shape_bytes(shape, size):
    assert sharding.shape_bytes(shape) == size


def test_child_env_sets_the_device_count_once(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_foo=1")
    env = sharding.child_env(DEVICES)
    flags = env["XLA_FLAGS"].split()
    assert flags == ["--xla_foo=1", f"--xla_force_host_platform_device_count={DEVICES}"]
    assert env["JAX_PLATFORMS"] == "cpu"
    assert str(ROOT) in env["PYTHONPATH"].split(os.pathsep)


@pytest.fixture(scope="module")
def sharding_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding")
    cmd = [sys.executable, "-m", "bench.sharding", "--quick", "--devices", str(DEVICES)]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "sharding.json").read_text())
    return out, proc.stdout, data


@pytest.mark.slow
def test_sharding_writes_its_outputs(sharding_run):
    out, stdout, data = sharding_run
    text = (out / "sharding.md").read_text()
    assert text.strip() in stdout  # the table printed is the one written
    assert f"on {DEVICES} simulated devices" in text and "not a speed-up" in text
    meta = data["meta"]
    assert meta["devices"] == DEVICES and meta["quick"] and meta["jax"] and meta["date"]
    assert len(data["rows"]) == len(sharding.OPERATORS) * len(sharding.PROGRAMS)


@pytest.mark.slow
def test_split_rows_communicate_one_all_reduce_of_the_parameters(sharding_run):
    _, _, data = sharding_run
    meta = data["meta"]
    ideal = meta["parameters"] * 4  # float32
    per_device = meta["num_batches"] // DEVICES
    for r in data["rows"]:
        if r["program"] not in SPLIT:
            continue
        assert r["devices"] == DEVICES and r["ideal_bytes"] == ideal, r
        assert r["counts"]["all-reduce"] == 1, r
        assert r["counts"]["all-gather"] == r["counts"]["all-to-all"] == 0, r
        assert r["bytes"] == ideal, r
        assert r["loop_steps"] == per_device, r  # each device scans its own batches only


@pytest.mark.slow
def test_gspmd_baseline_moves_the_data(sharding_run):
    _, _, data = sharding_run
    meta = data["meta"]
    baseline = [r for r in data["rows"] if r["program"] == "GSPMD baseline"]
    assert len(baseline) == len(sharding.OPERATORS)
    for r in baseline:
        assert r["counts"]["all-gather"] > 0 or r["bytes"] > r["ideal_bytes"], r
        assert r["loop_steps"] == meta["num_batches"], r  # every device scans every batch


@pytest.mark.slow
def test_every_row_agrees_with_one_device(sharding_run):
    _, _, data = sharding_run
    rtol = data["meta"]["rtol"]
    for r in data["rows"]:
        assert r["agrees"], r
        assert r["max_abs_diff"] <= rtol * r["reference_max_abs"], r
        assert r["median_s"] > 0 and len(r["times_s"]) == data["meta"]["repeat"]
    reference = [r for r in data["rows"] if r["program"] == sharding.REFERENCE]
    for r in reference:
        assert r["devices"] == 1 and r["bytes"] == r["ideal_bytes"] == 0, r
