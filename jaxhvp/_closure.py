"""A function as a static skeleton plus array leaves, so fresh closures share one kernel.

``split(func)`` walks what a function can read — closure cells, default arguments, the module
globals its code names, ``functools.partial`` arguments, a bound method's ``self`` — and
returns ``(skeleton, leaves, templates, pinned)``:

* ``leaves``: every array found (``jax.Array``, ``numpy.ndarray``). They enter the compiled
  kernel as arguments, so each call sees their current values.
* ``skeleton``: a hashable description of everything else. Python scalars and strings are in
  it by value (a changed value is a different kernel, never a stale one); functions, pytrees
  and plain objects are walked recursively; modules, classes, builtins, library functions and
  other opaque objects are in it by identity and read when the kernel is traced, as
  ``jax.jit`` does.
* ``templates``: live objects of the current call that the rebuild reuses (anything holding no
  arrays, so identity and side effects are kept; objects kept by identity) or copies (plain
  objects holding arrays). Never stored in the cache.
* ``pinned``: the objects the skeleton names by ``id``; the cache keeps them alive with the
  kernel so that no other object can take their ids.

``rebuild(skeleton, leaves, templates)`` makes an equivalent function that reads ``leaves``
(tracers, inside the kernel) instead of the arrays.
"""

from __future__ import annotations

import copy
import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

_ARRAY_TYPES = (jax.Array, np.ndarray)
_SCALAR_TYPES = (bool, int, float, complex, str, bytes, type(None), np.generic, np.dtype)
# Values taken as fixed, never walked: rebinding them between calls is not supported.
_FIXED_TYPES = (types.ModuleType, type, types.BuiltinFunctionType, types.BuiltinMethodType)
# Functions and objects from these packages are kept by identity rather than walked.
_LIBRARY_PACKAGES = frozenset({"jax", "jaxlib", "numpy", "scipy", "flax", "equinox", "optax"})
_MAX_NODES = 512


class TooComplex(Exception):
    """The walk met more than ``_MAX_NODES`` values."""


def split(func: Callable) -> tuple[Any, list, list, list]:
    """``(skeleton, leaves, templates, pinned)``; raises :class:`TooComplex` on huge graphs."""
    plain = _split_plain_function(func)
    if plain is not None:
        return plain
    walker = _Walker()
    skeleton = walker.walk(func)
    return skeleton, walker.leaves, walker.templates, walker.pinned


def rebuild(skeleton: Any, leaves: list, templates: list) -> Any:
    return _rebuild(skeleton, iter(leaves), iter(templates))


def _split_plain_function(func: Any) -> tuple[Any, list, list, list] | None:
    """The fast path: a function with no closure or defaults that names only fixed globals."""
    if type(func) is not types.FunctionType:
        return None
    if func.__closure__ or func.__defaults__ or func.__kwdefaults__:
        return None
    code, namespace = func.__code__, func.__globals__
    for name in _global_names(code):
        value = namespace.get(name)
        if value is not None and not isinstance(value, _FIXED_TYPES):
            return None
    return ("live", ("plain", id(code), id(namespace))), [], [func], [code, namespace]


_names_by_code: dict[int, tuple[types.CodeType, tuple[str, ...]]] = {}


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names the code (and code nested in it: lambdas, comprehensions) may read as globals."""
    known = _names_by_code.get(id(code))
    if known is not None and known[0] is code:
        return known[1]
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    if len(_names_by_code) >= 4096:
        _names_by_code.clear()
    _names_by_code[id(code)] = (code, tuple(sorted(names)))  # holds code: its id stays its own
    return _names_by_code[id(code)][1]


def _from_library(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.partition(".")[0] in _LIBRARY_PACKAGES


class _Walker:
    def __init__(self) -> None:
        self.leaves: list = []
        self.templates: list = []
        self.pinned: list = []
        self.nodes = 0
        self.active: set[int] = set()  # ids on the current path, to break cycles

    def walk(self, value: Any) -> Any:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise TooComplex
        if isinstance(value, _ARRAY_TYPES):
            self.leaves.append(value)
            return ("array",)
        if isinstance(value, _SCALAR_TYPES):
            return ("const", type(value), value)
        if isinstance(value, _FIXED_TYPES) or id(value) in self.active:
            return self._identity(value)
        self.active.add(id(value))
        num_leaves, num_templates = len(self.leaves), len(self.templates)
        try:
            skeleton = self._walk_composite(value)
        finally:
            self.active.discard(id(value))
        if len(self.leaves) == num_leaves and skeleton[0] != "id":
            # No arrays inside: the rebuild hands back this very object, so its identity and
            # side effects are kept; its contents stay in the key.
            del self.templates[num_templates:]
            self.templates.append(value)
            return ("live", skeleton)
        return skeleton

    def _identity(self, value: Any) -> Any:
        self.templates.append(value)
        self.pinned.append(value)
        return ("id", id(value))

    def _walk_composite(self, value: Any) -> Any:
        if isinstance(value, types.FunctionType):
            if _from_library(value):
                return self._identity(value)
            plain = _split_plain_function(value)
            if plain is not None:  # handed back live by walk(); its code and globals pinned
                self.pinned.extend(plain[3])
                return plain[0][1]
            return self._walk_function(value)
        if isinstance(value, types.MethodType):
            return ("method", self.walk(value.__func__), self.walk(value.__self__))
        if isinstance(value, functools.partial):
            args = tuple(self.walk(a) for a in value.args)
            keywords = tuple((k, self.walk(a)) for k, a in sorted(value.keywords.items()))
            return ("partial", self.walk(value.func), args, keywords)
        children, treedef = jax.tree_util.tree_flatten(value)
        if treedef.num_nodes > 1 or treedef.num_leaves != 1:  # a pytree container
            return ("tree", treedef, tuple(self.walk(c) for c in children))
        attributes = getattr(value, "__dict__", None)
        if type(attributes) is dict and not _from_library(type(value)):
            self.templates.append(value)
            items = sorted(attributes.items())
            return ("object", type(value), tuple((k, self.walk(a)) for k, a in items))
        return self._identity(value)

    def _walk_function(self, func: types.FunctionType) -> Any:
        cells = tuple(self._walk_cell(c) for c in func.__closure__ or ())
        defaults = tuple(self.walk(d) for d in func.__defaults__ or ())
        kwdefaults = func.__kwdefaults__ or {}
        kwdefaults = tuple((k, self.walk(d)) for k, d in sorted(kwdefaults.items()))
        namespace = func.__globals__
        names = tuple(
            (name, self.walk(namespace[name]))
            for name in _global_names(func.__code__)
            if name in namespace and not isinstance(namespace[name], _FIXED_TYPES)
        )
        self.pinned.append(namespace)
        self.templates.append(namespace)
        code = func.__code__
        return ("function", code, id(namespace), func.__name__, cells, defaults, kwdefaults, names)

    def _walk_cell(self, cell: types.CellType) -> Any:
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell: a variable assigned later
            return ("empty",)
        return self.walk(contents)


def _rebuild(skeleton: Any, leaves: Iterator, templates: Iterator) -> Any:
    kind = skeleton[0]
    if kind == "array":
        return next(leaves)
    if kind == "const":
        return skeleton[2]
    if kind in ("id", "live"):
        return next(templates)
    if kind == "method":
        func = _rebuild(skeleton[1], leaves, templates)
        return types.MethodType(func, _rebuild(skeleton[2], leaves, templates))
    if kind == "partial":
        args = [_rebuild(a, leaves, templates) for a in skeleton[2]]
        keywords = {k: _rebuild(a, leaves, templates) for k, a in skeleton[3]}
        return functools.partial(_rebuild(skeleton[1], leaves, templates), *args, **keywords)
    if kind == "tree":
        return skeleton[1].unflatten([_rebuild(c, leaves, templates) for c in skeleton[2]])
    if kind == "object":
        obj = copy.copy(next(templates))
        obj.__dict__.update({k: _rebuild(c, leaves, templates) for k, c in skeleton[2]})
        return obj
    if kind == "function":
        return _rebuild_function(skeleton, leaves, templates)
    raise AssertionError(kind)


def _rebuild_function(skeleton: Any, leaves: Iterator, templates: Iterator) -> Any:
    _, code, _, name, cells, defaults, kwdefaults, names = skeleton
    closure = tuple(_rebuild_cell(c, leaves, templates) for c in cells)
    default_values = tuple(_rebuild(d, leaves, templates) for d in defaults)
    kwdefault_values = {k: _rebuild(d, leaves, templates) for k, d in kwdefaults}
    overlay = {n: _rebuild(s, leaves, templates) for n, s in names}
    namespace = {**next(templates), **overlay}  # the globals it reads, others unchanged
    func = types.FunctionType(code, namespace, name, default_values or None, closure or None)
    func.__kwdefaults__ = kwdefault_values or None
    return func


def _rebuild_cell(skeleton: Any, leaves: Iterator, templates: Iterator) -> types.CellType:
    if skeleton[0] == "empty":
        return types.CellType()
    return types.CellType(_rebuild(skeleton, leaves, templates))
