"""Shared test set-up: float64 available, warnings as errors (pyproject), one tree comparison."""

import importlib.util
import os

import jax
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _x64():
    """float64 in every test; doctests (outside tests/) keep JAX's float32 default."""
    with jax.enable_x64(True):
        yield


from trees import TOLERANCES as TOLERANCES  # noqa: E402  (re-exported for the tests)
from trees import assert_trees_close as assert_trees_close  # noqa: E402


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


# tests/multidevice/ needs 8 devices, fixed before JAX starts: test_multidevice.py runs it in
# a subprocess with XLA_FLAGS set and JAXHVP_MULTIDEVICE=1; elsewhere it is not collected.
collect_ignore = [] if os.environ.get("JAXHVP_MULTIDEVICE") == "1" else ["multidevice"]
# Flax supports Python 3.11 and later; the test extra installs it there only (docs/frameworks.md
# skips itself without it).
if importlib.util.find_spec("flax") is None:
    collect_ignore.append("test_frameworks.py")
