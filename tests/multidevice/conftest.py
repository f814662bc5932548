"""Shared set-up of the 8-device tests: both mesh axis types (meshes.py makes the meshes)."""

import jax
import pytest
from jax.sharding import AxisType
from meshes import mesh_1d as mesh_1d  # re-exported for the tests
from meshes import mesh_2d as mesh_2d
from trees import assert_trees_close as assert_trees_close

if jax.device_count() != 8:  # collected only by tests/test_multidevice.py
    msg = "tests/multidevice/ needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
    raise RuntimeError(msg)


@pytest.fixture(params=[AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def axis_type(request):
    return request.param
