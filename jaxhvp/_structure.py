"""Where two pytrees' structures differ, said in a few paths instead of two whole tree dumps.

The trees are compared from the root down, one level at a time; the first levels that differ
are reported (a missing or extra key, a node of another type, static fields that differ), at
most ``SHOWN`` of them.
"""

from __future__ import annotations

from typing import Any

import jax

SHOWN = 3
_keystr = jax.tree_util.keystr


def difference(expected: Any, given: Any, expected_name: str, given_name: str) -> str:
    """A short account of how ``given``'s structure differs from ``expected``'s.

    ``expected_name`` and ``given_name`` are the arguments' names as the user wrote them; the
    paths are written after them, e.g. ``v['layer1']['w'] is missing``.
    """
    found: list[str] = []
    _compare(expected, given, (), (expected_name, given_name), found)
    shown = "; ".join(found[:SHOWN])
    return shown + ("; and more" if len(found) > SHOWN else "")


def _compare(x: Any, y: Any, path: tuple, names: tuple[str, str], found: list[str]) -> None:
    if len(found) > SHOWN or _structure(x) == _structure(y):
        return
    x_name, y_name = (name + _keystr(path) for name in names)
    x_kind, y_kind = _kind(x), _kind(y)
    if x_kind != y_kind:
        found.append(f"{x_name} is {x_kind} but {y_name} is {y_kind}")
        return
    x_children, y_children = _children(x), _children(y)
    missing = [key for key in x_children if key not in y_children]
    extra = [key for key in y_children if key not in x_children]
    if missing or extra:
        found.append(_keys_sentence(path, names, missing, extra))
    elif _node(x) != _node(y):
        found.append(
            f"{x_name} and {y_name} differ in the static fields of their {type(x).__name__}"
        )
    for key in x_children:
        if key in y_children:
            _compare(x_children[key], y_children[key], (*path, key), names, found)


def _keys_sentence(path: tuple, names: tuple[str, str], missing: list, extra: list) -> str:
    x_name, y_name = (name + _keystr(path) for name in names)
    if missing and extra:
        return f"{x_name} has {_entries(missing)} where {y_name} has {_entries(extra)}"
    if missing:
        return f"{names[1]}{_keystr((*path, missing[0]))} is missing" + _others(missing)
    return f"{names[1]}{_keystr((*path, extra[0]))} is not in {names[0]}" + _others(extra)


def _others(keys: list) -> str:
    return f" (and {len(keys) - 1} more at that level)" if len(keys) > 1 else ""


def _entries(keys: list) -> str:
    """Path entries as a reader names them: key 'w'; keys 'a', 'b'; index 0; attribute 'w'."""
    word, field = next(
        (names for key_type, names in _ENTRY_WORDS.items() if isinstance(keys[0], key_type)),
        ("entry", None),
    )
    values = [repr(getattr(key, field)) if field else str(key) for key in keys[:SHOWN]]
    plural = "es" if word == "index" else "s"
    more = ", ..." if len(keys) > SHOWN else ""
    return f"{word}{plural if len(keys) > 1 else ''} {', '.join(values)}{more}"


_ENTRY_WORDS = {
    jax.tree_util.DictKey: ("key", "key"),
    jax.tree_util.GetAttrKey: ("attribute", "name"),
    jax.tree_util.SequenceKey: ("index", "idx"),
    jax.tree_util.FlattenedIndexKey: ("index", "key"),
}


def _structure(tree: Any) -> Any:
    return jax.tree_util.tree_structure(tree)


def _is_leaf(tree: Any) -> bool:
    structure = _structure(tree)
    return structure.num_nodes == 1 and structure.num_leaves == 1


def _node(tree: Any) -> Any:
    """``tree``'s top node alone, its children as leaves: its type and static fields."""
    return jax.tree_util.tree_structure(tree, is_leaf=lambda child: child is not tree)


def _children(tree: Any) -> dict:
    """``tree``'s children by their path entry; none for a leaf."""
    if _is_leaf(tree):
        return {}
    pairs = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda child: child is not tree)
    return {path[0]: child for path, child in pairs[0]}


def _kind(tree: Any) -> str:
    if tree is None:
        return "None"
    if _is_leaf(tree):
        return "an array"
    return f"a {type(tree).__name__}"
