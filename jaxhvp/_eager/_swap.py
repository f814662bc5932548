"""Tracers in the user's own objects while a kernel traces, and the originals back after.

The plan of a split (``_walk``) lists the places that hold arrays: a dict or list item, a
closure cell, an attribute or slot, a class attribute, a partial's function and arguments.
``swapped`` puts each one's tracer there (a tuple holding arrays is rebuilt around its
tracers and put in its parent's place), runs the body, checks the function left every place
as it found it, and restores the arrays. Callers hold ``LOCK``: no other eager call sees the
tracers meanwhile. ``snapshot`` records every container a split reached, so that whatever
a trace wrote into them (a memo dict, a counter in a cell, an attribute) can be found and
undone: no user object keeps a tracer.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import types
from collections.abc import Iterator
from typing import Any

from ._walk import Skeleton, flatten_one

LOCK = threading.RLock()


class Rebound(Exception):
    """The function rebound a place the kernel had put a tracer in."""


def _get(container: Any, kind: str, key: Any) -> Any:
    if kind == "item":
        getter = dict.__getitem__ if isinstance(container, dict) else list.__getitem__
        return getter(container, key)
    if kind == "cell":
        return container.cell_contents
    if kind == "attr":
        return getattr(container, key)
    if kind == "slot":
        return key.__get__(container, type(container))
    if kind == "class":
        return container.__dict__[key]
    if kind == "partial":
        return (container.func, container.args)
    raise AssertionError(kind)


def _set(container: Any, kind: str, key: Any, value: Any) -> None:
    if kind == "item":
        setter = dict.__setitem__ if isinstance(container, dict) else list.__setitem__
        setter(container, key, value)
    elif kind == "cell":
        container.cell_contents = value
    elif kind == "attr":
        setattr(container, key, value)
    elif kind == "slot":
        key.__set__(container, value)
    elif kind == "class":
        type.__setattr__(container, key, value)
    elif kind == "partial":
        func, args = value
        container.__setstate__((func, args, container.keywords, container.__dict__))
    else:
        raise AssertionError(kind)


def _build(spec: Any, nodes: list, tracers: list, container: Any = None) -> Any:
    kind = spec[0]
    if kind == "leaf":
        return tracers[spec[1]]
    if kind == "tuple":
        original = nodes[spec[1]]
        items = list(tuple.__iter__(original))
        for i, child in spec[2]:
            items[i] = _build(child, nodes, tracers)
        return items_as(original, items)
    if kind == "tree":
        original = nodes[spec[1]]
        children, treedef = flatten_one(original)
        for i, child in spec[2]:
            children[i] = _build(child, nodes, tracers)
        return treedef.unflatten(children)
    if kind == "partial":  # (func spec, args spec) of the partial ``container``
        func_spec, args_spec = spec[1]
        func = container.func if func_spec is None else _build(func_spec, nodes, tracers)
        args = container.args if args_spec is None else _build(args_spec, nodes, tracers)
        return (func, args)
    raise AssertionError(kind)


def items_as(original: tuple, items: list) -> tuple:
    """A tuple of the type of ``original`` (a namedtuple stays one) holding ``items``."""
    if type(original) is tuple:
        return tuple(items)
    return tuple.__new__(type(original), items)


@contextlib.contextmanager
def swapped(skeleton: Skeleton, nodes: list, tracers: list, func: Any) -> Iterator[Any]:
    """Yields the function to trace: ``func`` itself with tracers in its places (or, when
    ``func`` is itself a tuple or pytree holding arrays, its rebuilt stand-in)."""
    placed = []
    try:
        for index, kind, key, spec in skeleton.plan:
            container = nodes[index]
            new = _build(
                ("partial", spec) if kind == "partial" else spec, nodes, tracers, container
            )
            placed.append((container, kind, key, _get(container, kind, key), new))
            _set(container, kind, key, new)
        yield func if skeleton.root is None else _build(skeleton.root, nodes, tracers)
        for container, kind, key, _, new in placed:
            now = _get(container, kind, key)
            if now is not new and not (kind == "partial" and now == new):
                msg = f"it rebinds {_describe(container, kind, key)} while it runs"
                raise Rebound(msg)
    finally:
        for container, kind, key, old, _ in reversed(placed):
            _set(container, kind, key, old)


def _describe(container: Any, kind: str, key: Any) -> str:
    name = getattr(container, "__name__", type(container).__name__)
    if kind == "item":
        return f"the item {key!r} of a {type(container).__name__}"
    if kind == "slot":
        return f"the slot {key.__name__!r} of a {type(container).__name__}"
    if kind == "class":
        return f"the class attribute {name}.{key}"
    return f"a value of {name}"


_EMPTY = object()


def _state(node: Any) -> Any:
    """What a container holds, shallowly, compared by identity (``None`` for immutables)."""
    if isinstance(node, dict):
        return list(dict.items(node))
    if isinstance(node, list):
        return list(list.__iter__(node))
    if isinstance(node, types.CellType):
        try:
            return node.cell_contents
        except ValueError:
            return _EMPTY
    if isinstance(node, types.FunctionType):
        return (node.__code__, node.__defaults__, node.__kwdefaults__, list(node.__dict__.items()))
    if isinstance(node, functools.partial):
        return (node.func, node.args, node.keywords, node.__dict__)
    if isinstance(node, type):
        return list(node.__dict__.items())
    if isinstance(node, (tuple, types.MethodType, types.ModuleType)):
        return None
    slots = [(d, _slot_value(d, node)) for d in _slots_of(type(node))]
    return (type(node), slots)


def _slots_of(cls: type) -> list:
    return [
        d
        for base in cls.__mro__
        for d in base.__dict__.values()
        if isinstance(d, types.MemberDescriptorType)
    ]


def _slot_value(descriptor: Any, obj: Any) -> Any:
    try:
        return descriptor.__get__(obj, type(obj))
    except AttributeError:
        return _EMPTY


def _same(a: Any, b: Any) -> bool:
    """Identity, element by element, through lists and tuples of the states above."""
    if type(a) in (list, tuple) and type(b) is type(a):
        return len(a) == len(b) and all(map(_same, a, b))
    return a is b


def snapshot(nodes: list) -> list:
    return [(node, _state(node)) for node in nodes]


def changed(saved: list) -> Any:
    """The first container whose contents differ from ``saved``, or ``None``."""
    for node, state in saved:
        if state is not None and not _same(state, _state(node)):
            return node
    return None


def restore(saved: list) -> None:
    """Puts back what every container held when ``saved`` was taken."""
    for node, state in reversed(saved):
        if state is None or _same(state, _state(node)):
            continue
        if isinstance(node, dict):
            dict.clear(node)
            dict.update(node, state)
        elif isinstance(node, list):
            list.__setitem__(node, slice(None), state)
        elif isinstance(node, types.CellType):
            if state is _EMPTY:
                del node.cell_contents
            else:
                node.cell_contents = state
        elif isinstance(node, types.FunctionType):
            node.__code__, node.__defaults__, node.__kwdefaults__, attributes = state
            node.__dict__.clear()
            node.__dict__.update(attributes)
        elif isinstance(node, functools.partial):
            node.__setstate__(state)
        elif isinstance(node, type):
            _restore_class(node, dict(state))
        else:
            for descriptor, value in state[1]:
                if value is _EMPTY:
                    with contextlib.suppress(AttributeError):
                        descriptor.__delete__(node)
                else:
                    descriptor.__set__(node, value)


def _restore_class(cls: type, saved: dict) -> None:
    for name in [n for n in cls.__dict__ if n not in saved]:
        type.__delattr__(cls, name)
    for name, value in saved.items():
        if cls.__dict__.get(name, _EMPTY) is not value:
            type.__setattr__(cls, name, value)
