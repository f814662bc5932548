"""The packages: ``python -m build`` makes an sdist and, from it, a wheel (so the sdist holds
everything the build needs); the wheel's metadata and files are checked, and the wheel is
installed into a fresh virtual environment (dependencies from the package index) and used.

The builds are isolated, as pip's are: ``build`` installs the ``[build-system]`` requirements
(hatchling) into a throwaway environment from the index, so the test checks the build a user
gets rather than whatever build backend the test environment has; the fresh environment's
install needs the index anyway.
"""

import email
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import jaxhvp

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NAME = f"jaxhvp-{jaxhvp.__version__}"
CLASSIFIERS = [
    "Development Status :: 3 - Alpha",
    "Intended Audience :: Science/Research",
    "License :: OSI Approved :: Apache Software License",
    "Programming Language :: Python :: 3 :: Only",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Topic :: Scientific/Engineering :: Artificial Intelligence",
    "Topic :: Scientific/Engineering :: Mathematics",
    "Typing :: Typed",
]


def run(args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, env=env, **kwargs
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # Without --sdist/--wheel, build makes the sdist, then the wheel from the unpacked sdist.
    run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out)
    return out


def test_the_wheel_metadata(dist):
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"{NAME}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        meta = email.message_from_bytes(archive.read(f"{NAME}.dist-info/METADATA"))
    assert meta["Name"] == "jaxhvp"
    assert meta["Version"] == jaxhvp.__version__
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License"] == "Apache-2.0"
    assert set(CLASSIFIERS) <= set(meta.get_all("Classifier"))
    assert meta["Author"] == "jaxhvp developers"
    assert meta["Summary"]
    assert meta["Description-Content-Type"] == "text/markdown"
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("jax>=") for r in requires)
    # No placeholder links: the project has no hosted pages yet.
    links = (meta.get_all("Project-URL") or []) + (meta.get_all("Home-page") or [])
    assert not [link for link in links if "example" in link.lower() or "todo" in link.lower()]
    assert not links


def test_the_wheel_holds_the_package_only(dist):
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "jaxhvp/__init__.py" in names
    assert "jaxhvp/py.typed" in names
    assert "jaxhvp/optax/__init__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    tops = {n.split("/")[0] for n in names}
    assert tops == {"jaxhvp", f"{NAME}.dist-info"}, tops


def test_the_sdist_holds_the_sources(dist):
    (sdist,) = dist.glob("*.tar.gz")
    assert sdist.name == f"{NAME}.tar.gz"
    with tarfile.open(sdist) as archive:
        names = {n.removeprefix(f"{NAME}/") for n in archive.getnames()}
    for name in [
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "PKG-INFO",
        "jaxhvp/__init__.py",
        "jaxhvp/py.typed",
        "tests/test_packaging.py",
        "docs/api/index.md",
        "mkdocs.yml",
    ]:
        assert name in names, name
    assert not [n for n in names if n.startswith("results/") or n.endswith(".pyc")]


def test_the_wheel_installs_into_a_fresh_environment(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    env = tmp_path / "env"
    run([sys.executable, "-m", "venv", env])
    python = env / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel])
    code = (
        "import jaxhvp, jax.numpy as jnp; print(jaxhvp.__file__); "
        "print(jaxhvp.__version__, jaxhvp.hvp(lambda x: (x**3).sum(), jnp.ones(2), jnp.ones(2)))"
    )
    # From an empty directory, so that the checkout cannot be imported instead.
    location, output = run([python, "-c", code], cwd=tmp_path).strip().splitlines()[-2:]
    assert Path(location).is_relative_to(env), location
    assert output == (
        f"{jaxhvp.__version__} (Array(2., dtype=float32), Array([6., 6.], dtype=float32))"
    )
