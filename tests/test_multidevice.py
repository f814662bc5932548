"""Runs tests/multidevice/ on 8 simulated CPU devices, in a subprocess.

The device count is fixed when JAX starts (``XLA_FLAGS``), and this process has started it
with one device, so the 8-device tests run in their own interpreter; their pytest output is
shown when they fail.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_eight_device_suite():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["JAXHVP_MULTIDEVICE"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-x", str(HERE / "multidevice")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=HERE.parent)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
