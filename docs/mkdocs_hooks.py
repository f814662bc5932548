"""Build-time helpers of the documentation site (mkdocs.yml names this file twice).

* ``on_config``, an mkdocs hook: puts jaxhvp's version into the site's name and footer. The
  version is read from ``jaxhvp/__init__.py`` by regex (as hatchling reads it), so building
  the site does not import JAX.
* ``SphinxRoles``, a griffe extension for mkdocstrings: jaxhvp's docstrings cross-reference
  with Sphinx roles (``:func:`hvp```, ``:class:`jaxhvp.Operator```, ``:doc:`curvature```),
  which Markdown would show verbatim. Each becomes a link where its target is rendered in
  the API reference (or, for ``:doc:``, is a page of the site) and inline code otherwise.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import griffe

DOCS = Path(__file__).resolve().parent
ROLE = re.compile(r":(func|class|meth|attr|data|const|mod|exc|obj|doc):`([^`]+)`")


def on_config(config):
    init = Path(config.config_file_path).parent / "jaxhvp" / "__init__.py"
    match = re.search(r'^__version__ = "([^"]+)"', init.read_text(encoding="utf-8"), re.M)
    if match is None:
        msg = f"no __version__ in {init}"
        raise ValueError(msg)
    version = match[1]
    config.site_name = f"jaxhvp {version}"
    config.copyright = f"jaxhvp {version} · Apache License 2.0"
    return config


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx cross-reference roles in docstrings into autorefs links."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(
                    lambda m, obj=obj: _replace(m, obj), obj.docstring.value
                )


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _replace(match: re.Match, obj: griffe.Object) -> str:
    role, text = match[1], match[2]
    name = text.lstrip("~").removesuffix("()")
    title = name.rsplit(".", 1)[-1] if text.startswith("~") else name
    if role == "doc":
        # Docstrings render on the API pages, docs/api/*.md, one level below the other pages.
        if (DOCS / f"{name}.md").is_file():
            return f"[{html.escape(title)}](../{name}.md)"
        return f"`{title}`"
    target = _resolve(name, obj)
    code = f"<code>{html.escape(title)}</code>"
    if target is None:
        return code
    # ``optional``: autorefs links it where the target is rendered, and leaves the code alone
    # (no warning) where it is not, e.g. a private helper.
    return f'<autoref identifier="{target}" optional>{code}</autoref>'


def _resolve(name: str, obj: griffe.Object) -> str | None:
    """The canonical path of ``name`` as seen from ``obj``: the object's class and modules
    from the innermost out, then the top-level package, then ``name`` as an absolute path."""
    if name.startswith("."):
        return None
    scopes = []
    scope: Any = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        scopes.append(scope.path)
        scope = scope.parent
    candidates = [f"{path}.{name}" for path in scopes] + [name]
    for path in candidates:
        try:
            found = obj.modules_collection[path]
            if found.is_alias:
                found = found.final_target
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        return found.path
    return None
