"""Guards: straight-line Python, written while a function is walked, that re-checks the walk.

A guard takes a function and returns its split (``_walk.split``) when everything the walk
read is as it was (same code, same globals, the same Python values, containers of the same
shape, arrays where there were arrays), or ``None`` for "walk again". It holds no arrays: an array
is only checked to be one, and read afresh on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

MISSING = object()  # what a guard reads for a key, attribute or global that is gone


class Source:
    """The text of one guard and the constants it names."""

    argument = "func"
    namespace_defaults: ClassVar[dict[str, Any]] = {}  # helpers guards call (set by _walk)

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {"MISSING": MISSING, **self.namespace_defaults}
        self._num_locals = 0

    def constant(self, value: Any) -> str:
        """A name under which the guard sees ``value``."""
        name = f"k{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def local(self, expression: str) -> str:
        """A new variable holding ``expression``."""
        name = f"v{self._num_locals}"
        self._num_locals += 1
        self.lines.append(f"{name} = {expression}")
        return name

    def require(self, *conditions: str) -> None:
        """The guard fails unless every condition holds (tested in order)."""
        if conditions:
            self.lines.append(f"if not ({' and '.join(conditions)}): return None")

    def compile(self, result: str) -> Callable:
        """The guard: ``None`` unless every requirement holds, else ``result``."""
        body = "".join(f"\n    {line}" for line in [*_merged(self.lines), f"return {result}"])
        text = f"def guard({self.argument}):{body}\n"
        exec(compile(text, "<jaxhvp guard>", "exec"), self.namespace)
        return self.namespace.pop("guard")


def _merged(lines: list[str]) -> list[str]:
    """Consecutive requirements as one test (fewer jumps in the guard)."""
    merged: list[str] = []
    prefix, suffix = "if not (", "): return None"
    for line in lines:
        if merged and line.startswith(prefix) and merged[-1].startswith(prefix):
            merged[-1] = f"{merged[-1][: -len(suffix)]} and {line[len(prefix) :]}"
        else:
            merged.append(line)
    return merged
