"""The fix to name when a leaf that cannot be differentiated belongs to a framework's model.

A Flax NNX model carries RNG state (``RngCount``, ``RngKey``: integer and key arrays) next
to its parameters; an Equinox module keeps functions (activations) among its leaves; a Flax
Linen module holds no arrays at all (its variables come from ``init``). Each passed whole as
``inputs`` fails jaxhvp's checks; the error then says how to take the parameters apart. The
frameworks are never imported: their classes are looked up only in modules the user has
already imported.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

_DOCS = "(see docs/frameworks.md)"
_EXPECTED = "only floating-point arrays can be differentiated"


@dataclasses.dataclass(frozen=True)
class _Framework:
    module: str  # where its node classes live, once the user has imported it
    is_node: Callable[[Any, Any], bool]  # (module, value) -> whether value is such a node
    sentence: str  # what the node is, with {where}, {fn_name}, {node}, {leaf} and {given}
    fix: str


_NNX = _Framework(
    module="flax.nnx",
    is_node=lambda nnx, x: isinstance(x, nnx.Variable) and not isinstance(x, nnx.Param),
    sentence="{where} given to {fn_name} is a Flax NNX {node} holding {given}",
    fix=(
        "Split the model: `graphdef, params, rest = nnx.split(model, nnx.Param, ...)` and "
        "differentiate with respect to `params` only, calling `nnx.merge(graphdef, params, "
        f"rest, copy=True)` inside the function {_DOCS}."
    ),
)
_EQUINOX = _Framework(
    module="equinox",
    is_node=lambda eqx, x: isinstance(x, eqx.Module),
    sentence="{where} given to {fn_name} is an Equinox {node} whose leaf {leaf} is {given}",
    fix=(
        "Differentiate with respect to its arrays only: `params, static = "
        "eqx.partition(model, eqx.is_inexact_array)`, calling `eqx.combine(params, static)` "
        f"inside the function {_DOCS}."
    ),
)
_LINEN = _Framework(
    module="flax.linen",
    is_node=lambda linen, x: isinstance(x, linen.Module),
    sentence="{where} given to {fn_name} is a Flax Linen {node}, which holds no arrays",
    fix=(
        "Differentiate with respect to its variables: `params = model.init(key, x)['params']`, "
        f"calling `model.apply({{'params': params}}, x)` inside the function {_DOCS}."
    ),
)
_FRAMEWORKS = (_NNX, _EQUINOX, _LINEN)


def framework_error(tree: Any, path: tuple, leaf: Any, what: str, fn_name: str) -> str | None:
    """The message for ``leaf``, at ``path`` in the argument ``what``, when a framework's model
    holds it; else None. It names the model's node, what the leaf is, and the fix."""
    for framework in _FRAMEWORKS:
        module = sys.modules.get(framework.module)
        if module is None:
            continue
        node_path, node = _enclosing_node(tree, path, functools.partial(framework.is_node, module))
        if node is not None:
            sentence = framework.sentence.format(
                where=what + jax.tree_util.keystr(node_path),
                fn_name=fn_name,
                node=type(node).__name__,
                leaf=what + jax.tree_util.keystr(path),
                given=_describe(leaf),
            )
            return f"{sentence}, but {_EXPECTED}. {framework.fix}"
    return None


def _enclosing_node(tree: Any, path: tuple, is_node: Callable[[Any], bool]) -> tuple:
    """The outermost node of ``tree`` on ``path`` for which ``is_node`` holds: (path, node)."""
    for node_path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_node)[0]:
        if is_node(node) and path[: len(node_path)] == node_path:
            return node_path, node
    return (), None


def _describe(leaf: Any) -> str:
    if isinstance(leaf, (jax.Array, np.ndarray)):
        return f"an array of dtype {leaf.dtype}"
    name = type(leaf).__name__
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"
