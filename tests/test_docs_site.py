"""The documentation site: it builds under ``mkdocs build --strict``, every Python example in
the README and the pages is executed by the test suite, and the API reference covers every
public name."""

import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import jaxhvp

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# The packages whose ``__all__`` the API reference documents: every public module of jaxhvp.
PACKAGES = [
    "jaxhvp",
    "jaxhvp.operators",
    "jaxhvp.linalg",
    "jaxhvp.optimize",
    "jaxhvp.spectrum",
    "jaxhvp.optax",
]


def test_the_site_builds_strictly_and_shows_the_version(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    version = f"jaxhvp {jaxhvp.__version__}"
    for page in ["index.html", "api/index.html", "api/jaxhvp/index.html"]:
        assert version in (site / page).read_text(encoding="utf-8"), page
    # The API reference is rendered from the docstrings, Sphinx roles turned into links.
    reference = (site / "api/linalg/index.html").read_text(encoding="utf-8")
    assert 'id="jaxhvp.linalg.solve"' in reference
    assert ":func:" not in reference
    assert ":class:" not in reference


# --- every Python example is a doctest --------------------------------------------------------

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
PYTHON = {"python", "py", "python3", "pycon"}
# Pages whose plain ```python blocks a test runs as scripts instead of doctests, and that test.
RUN_AS_SCRIPTS = {
    "docs/sharding.md": "tests/multidevice/test_docs.py",  # needs 8 devices
}


def fenced_blocks(path):
    """``(first line number, info string, body)`` of each fenced code block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, start = match["fence"], i
        body = []
        i += 1
        while i < len(lines):
            close = FENCE.match(lines[i])
            if (
                close
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            body.append(lines[i])
            i += 1
        yield start + 1, match["info"].strip(), "\n".join(body)
        i += 1


def markdown_files():
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_every_python_example_is_a_doctest():
    """pytest runs the Markdown files' doctests (``--doctest-glob=*.md``), so a ``python``
    block is executed only if it is a doctest. The exceptions are run by a test of their own:
    a complete program with a ``title="name.py"`` that a test extracts by that title, and the
    blocks of the pages in ``RUN_AS_SCRIPTS``."""
    tests_text = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("*.py"))
    for page, test in RUN_AS_SCRIPTS.items():
        assert Path(page).name in (ROOT / test).read_text(encoding="utf-8"), (page, test)
    untested = []
    blocks = 0
    for path in markdown_files():
        for line, info, body in fenced_blocks(path):
            words = info.split()
            if not words or words[0].lstrip(".{").lower() not in PYTHON:
                continue
            blocks += 1
            if ">>>" in body:
                continue
            title = re.search(r'title="([^"]+)"', info)
            if title and f'title="{title[1]}"' in tests_text:
                continue
            if not title and str(path.relative_to(ROOT)) in RUN_AS_SCRIPTS:
                continue
            untested.append(f"{path.relative_to(ROOT)}:{line}: ```{info}")
    assert blocks > 0
    assert not untested, (
        "python blocks that no test executes (write them as doctests, with >>>):\n"
        + "\n".join(untested)
    )


def test_fenced_blocks_are_found(tmp_path):
    page = "\n".join(
        [
            "text",
            "```python",
            ">>> 1 + 1",
            "2",
            "```",
            '    ```python title="x.py"',
            "    print(1)",
            "    ```",
            "~~~",
            "```python",
            "~~~",
        ]
    )
    path = tmp_path / "page.md"
    path.write_text(page, encoding="utf-8")
    blocks = list(fenced_blocks(path))
    assert blocks == [
        (2, "python", ">>> 1 + 1\n2"),
        (6, 'python title="x.py"', "    print(1)"),
        (9, "", "```python"),
    ]


# --- the API reference covers every public name -------------------------------------------------

DIRECTIVE = re.compile(r"^:::[ \t]+([\w.]+)[ \t]*$", re.M)


def directives():
    """``{identifier: page}`` of the ``::: identifier`` directives of docs/api/*.md."""
    found = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        for identifier in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            found[identifier] = page.name
    return found


def resolve(identifier):
    """The object a dotted path names: its longest importable module, then attributes."""
    parts = identifier.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(identifier)


def test_every_public_module_is_checked():
    public = {
        f"jaxhvp.{info.name}"
        for info in pkgutil.iter_modules(jaxhvp.__path__)
        if not info.name.startswith("_")
    }
    assert public | {"jaxhvp"} == set(PACKAGES)


def test_the_api_reference_documents_every_public_name():
    documented = directives()
    assert documented
    objects = {}
    for identifier in documented:
        objects[id(resolve(identifier))] = identifier
    missing = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for name in package.__all__:
            obj = getattr(package, name)
            if f"{package_name}.{name}" in documented or id(obj) in objects:
                continue
            if getattr(obj, "__name__", None) in PACKAGES and obj is not package:
                continue  # a subpackage, documented on its own page (checked here too)
            missing.append(f"{package_name}.{name}")
    assert not missing, "public names missing from docs/api/*.md (add a ::: line):\n" + "\n".join(
        missing
    )


def test_every_api_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted((DOCS / "api").glob("*.md")):
        assert f"api/{page.name}" in config, page.name
