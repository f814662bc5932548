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

Walking costs about a microsecond per value, so each walk also writes a guard (``_guard``)
that re-checks what it read; the next call of the same function, or of a fresh closure of
the same code, is split by the guard in about a microsecond in all.
"""

from __future__ import annotations

import copy
import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from . import _guard
from ._guard import MISSING as _MISSING

_ARRAY_TYPES = (jax.Array, np.ndarray)
_SCALAR_TYPES = (bool, int, float, complex, str, bytes, type(None), np.generic, np.dtype)
# Values taken as fixed, never walked: rebinding them between calls is not supported.
_FIXED_TYPES = (types.ModuleType, type, types.BuiltinFunctionType, types.BuiltinMethodType)
# Functions and objects from these packages are kept by identity rather than walked.
_LIBRARY_PACKAGES = frozenset({"jax", "jaxlib", "numpy", "scipy", "flax", "equinox", "optax"})
MAX_NODES = 4096  # values a walk may meet; beyond, the function is not split
_MAX_MEMO = 1024  # functions (by code) whose latest splits are remembered
_GUARDS_PER_KEY = 4
_MAX_PLAIN_TREE_NODES = 64  # larger pytrees are guarded by their treedef
_tree_flatten = jax.tree_util.tree_flatten


class TooComplex(Exception):
    """The walk met more than ``MAX_NODES`` values."""


class Skeleton:
    """A skeleton with its hash computed once: it is part of every cache key."""

    __slots__ = ("_hash", "tree")

    def __init__(self, tree: Any) -> None:
        self.tree = tree
        self._hash = hash(tree)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            type(other) is Skeleton and self._hash == other._hash and self.tree == other.tree
        )


_guarded: dict[Any, list[Callable]] = {}  # memo key -> guards of the latest splits, newest first


def split(func: Callable) -> tuple[Skeleton, list, list, list] | None:
    """``(skeleton, leaves, templates, pinned)``, or ``None`` when ``func`` reads more than
    ``MAX_NODES`` values (no skeleton could then be trusted to find every array in it).

    A function whose object graph is as a recent one of the same code records (same
    skeleton) is split by that record's guard, a few attribute reads and identity tests;
    anything else is walked.
    """
    key = _memo_key(func)
    for guard in _guarded.get(key, ()):
        try:
            found = guard(func)
        except Exception:  # e.g. a cell emptied since: the walk decides
            continue
        if found is not None:
            return found
    walker = _Walker()
    try:
        skeleton = Skeleton(walker.walk(func, walker.source.argument))
    except TooComplex:
        return None
    guard = walker.compile_guard(skeleton)
    if len(_guarded) >= _MAX_MEMO:
        _guarded.clear()
    _guarded[key] = [guard, *_guarded.get(key, ())][:_GUARDS_PER_KEY]
    return skeleton, walker.leaves, walker.templates, walker.pinned


def forget() -> None:
    """Drops the recorded guards (and the objects they hold)."""
    _guarded.clear()


def rebuild(skeleton: Skeleton, leaves: list, templates: list) -> Any:
    return _rebuild(skeleton.tree, iter(leaves), iter(templates))


def _memo_key(func: Any) -> Any:
    kind = type(func)
    if kind is types.FunctionType:
        return func.__code__
    if kind is types.MethodType:
        return kind, func.__func__
    return kind


def _split_plain_function(func: Any) -> tuple | None:
    """A function with no closure or defaults that names only fixed globals: its skeleton."""
    if type(func) is not types.FunctionType:
        return None
    if func.__closure__ or func.__defaults__ or func.__kwdefaults__:
        return None
    code, namespace = func.__code__, func.__globals__
    for name in _global_names(code):
        value = namespace.get(name)
        if value is not None and not isinstance(value, _FIXED_TYPES):
            return None
    return ("plain", id(code), id(namespace))


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


def _is_pytree_leaf(value: Any) -> bool:
    treedef = jax.tree_util.tree_structure(value)
    return treedef.num_nodes == 1 and treedef.num_leaves == 1


def _is_plain_tree(value: Any) -> bool:
    """Nested dicts (string keys), lists, tuples and Nones, down to pytree leaves."""
    if value is None:
        return True
    if type(value) is dict:
        keys_ok = all(type(k) is str for k in value)
        return keys_ok and all(_is_plain_tree(c) or _is_pytree_leaf(c) for c in value.values())
    if type(value) in (list, tuple):
        return all(_is_plain_tree(c) or _is_pytree_leaf(c) for c in value)
    return False


class _Walker:
    """Splits one function, and writes its guard (``_guard.Source``) along the way: every
    decision the walk takes on a value is also written as a test on that value."""

    def __init__(self) -> None:
        self.leaves: list = []
        self.templates: list = []
        self.pinned: list = []
        self.source = _guard.Source()
        self.leaf_exprs: list[str] = []
        self.template_exprs: list[str] = []
        self.nodes = 0
        self.active: set[int] = set()  # ids on the current path, to break cycles

    def compile_guard(self, skeleton: Skeleton) -> Callable:
        """``func -> split(func)`` for functions that split as this one did, else ``None``."""
        source = self.source
        leaves, templates = ", ".join(self.leaf_exprs), ", ".join(self.template_exprs)
        fixed = f"{source.constant(skeleton)}, [{leaves}], [{templates}]"
        return source.compile(f"{fixed}, {source.constant(self.pinned)}")

    def walk(self, value: Any, at: str) -> Any:
        """The skeleton of ``value``, which the guard holds in its variable ``at``."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise TooComplex
        source = self.source
        if isinstance(value, _ARRAY_TYPES):
            source.require(f"{source.constant(is_array)}({at})")
            self.leaves.append(value)
            self.leaf_exprs.append(at)
            return ("array",)
        if isinstance(value, _SCALAR_TYPES):
            kind, same = source.constant(type(value)), source.constant(value)
            source.require(f"type({at}) is {kind}", f"{at} == {same}")
            return ("const", type(value), value)
        if isinstance(value, _FIXED_TYPES) or id(value) in self.active:
            return self._identity(value, at)
        self.active.add(id(value))
        num_leaves, num_templates = len(self.leaves), len(self.templates)
        try:
            skeleton = self._walk_composite(value, at)
        finally:
            self.active.discard(id(value))
        if len(self.leaves) == num_leaves and skeleton[0] != "id":
            # No arrays inside: the rebuild hands back this very object, so its identity and
            # side effects are kept; its contents stay in the key.
            del self.templates[num_templates:], self.template_exprs[num_templates:]
            self._template(value, at)
            return ("live", skeleton)
        return skeleton

    def _template(self, value: Any, at: str) -> None:
        self.templates.append(value)
        self.template_exprs.append(at)

    def _identity(self, value: Any, at: str) -> Any:
        self.source.require(f"{at} is {self.source.constant(value)}")
        self._template(value, at)
        self.pinned.append(value)
        return ("id", id(value))

    def _walk_composite(self, value: Any, at: str) -> Any:
        source = self.source
        if isinstance(value, types.FunctionType):
            if _from_library(value):
                return self._identity(value, at)
            plain = _split_plain_function(value)
            if plain is not None:  # handed back live by walk(); its code and globals pinned
                self._require_plain(value, at)
                self.pinned.extend((value.__code__, value.__globals__))
                return plain
            return self._walk_function(value, at)
        if isinstance(value, types.MethodType):
            source.require(f"type({at}) is {source.constant(types.MethodType)}")
            func = self.walk(value.__func__, source.local(f"{at}.__func__"))
            return ("method", func, self.walk(value.__self__, source.local(f"{at}.__self__")))
        if isinstance(value, functools.partial):
            return self._walk_partial(value, at)
        children, treedef = jax.tree_util.tree_flatten(value)
        if treedef.num_nodes > 1 or treedef.num_leaves != 1:  # a pytree container
            if treedef.num_nodes <= _MAX_PLAIN_TREE_NODES and _is_plain_tree(value):
                child_exprs = self._require_plain_tree(value, at)
            else:
                flat = source.local(f"{source.constant(_tree_flatten)}({at})")
                source.require(f"{flat}[1] == {source.constant(treedef)}")
                if all(isinstance(c, _ARRAY_TYPES) for c in children):
                    return ("tree", treedef, self._walk_arrays(children, f"{flat}[0]"))
                child_exprs = [f"{flat}[0][{i}]" for i in range(len(children))]
            walked = (self.walk(c, source.local(e)) for c, e in zip(children, child_exprs))
            return ("tree", treedef, tuple(walked))
        attributes = getattr(value, "__dict__", None)
        if type(attributes) is dict and not _from_library(type(value)):
            source.require(f"type({at}) is {source.constant(type(value))}")
            self._template(value, at)
            items = sorted(attributes.items())
            fields = source.local(f"{at}.__dict__")
            source.require(f"len({fields}) == {len(items)}")
            return ("object", type(value), self._walk_items(items, fields))
        return self._identity(value, at)

    def _walk_arrays(self, arrays: list, at: str) -> tuple:
        """Walks a list of arrays (a large parameter dict's leaves) with one test in all."""
        self.nodes += len(arrays)
        if self.nodes > MAX_NODES:
            raise TooComplex
        self.source.require(f"all(map({self.source.constant(is_array)}, {at}))")
        self.leaves.extend(arrays)
        self.leaf_exprs.append(f"*{at}")
        return (("array",),) * len(arrays)

    def _walk_items(self, items: list, mapping: str) -> tuple:
        """Walks ``(key, value)`` pairs read from the dict the guard holds in ``mapping``."""
        source = self.source
        walked = []
        for key, item in items:
            item_at = source.local(f"{mapping}.get({source.constant(key)}, MISSING)")
            walked.append((key, self.walk(item, item_at)))
        return tuple(walked)

    def _walk_partial(self, value: functools.partial, at: str) -> Any:
        source = self.source
        source.require(
            f"type({at}) is {source.constant(type(value))}",
            f"len({at}.args) == {len(value.args)}",
            f"len({at}.keywords) == {len(value.keywords)}",
        )
        args = tuple(
            self.walk(a, source.local(f"{at}.args[{i}]")) for i, a in enumerate(value.args)
        )
        keywords = self._walk_items(sorted(value.keywords.items()), source.local(f"{at}.keywords"))
        return ("partial", self.walk(value.func, source.local(f"{at}.func")), args, keywords)

    def _require_plain(self, func: types.FunctionType, at: str) -> None:
        """The guard of ``_split_plain_function``, stricter: the same globals by identity."""
        namespace = self._require_code(func, at)
        self.source.require(
            f"{at}.__closure__ is None",
            f"{at}.__defaults__ is None",
            f"{at}.__kwdefaults__ is None",
        )
        self._require_globals(func, namespace, _global_names(func.__code__))

    def _require_code(self, func: types.FunctionType, at: str) -> str:
        """Requires a function of the same code and globals; returns the globals' name."""
        source = self.source
        namespace = source.constant(func.__globals__)
        source.require(
            f"type({at}) is {source.constant(types.FunctionType)}",
            f"{at}.__code__ is {source.constant(func.__code__)}",
            f"{at}.__globals__ is {namespace}",
        )
        return namespace

    def _require_globals(self, func: types.FunctionType, namespace: str, names: Any) -> None:
        source, values = self.source, func.__globals__
        source.require(
            *(
                f"{namespace}.get({source.constant(name)}, MISSING)"
                f" is {source.constant(values.get(name, _MISSING))}"
                for name in names
            )
        )

    def _require_plain_tree(self, value: Any, at: str) -> list[str]:
        """Requires the nesting of dicts, lists, tuples and Nones; returns the expressions of
        the leaves, in ``tree_flatten``'s order (dict keys sorted)."""
        source = self.source
        if value is None:
            source.require(f"{at} is None")
            return []
        kind = type(value)
        source.require(f"type({at}) is {source.constant(kind)}", f"len({at}) == {len(value)}")
        if kind is dict:
            keys = sorted(value)
            children = [(value[k], f"{at}.get({source.constant(k)}, MISSING)") for k in keys]
        else:
            children = [(c, f"{at}[{i}]") for i, c in enumerate(value)]
        exprs = []
        for child, child_at in children:
            if _is_pytree_leaf(child):
                exprs.append(child_at)
            else:
                exprs.extend(self._require_plain_tree(child, source.local(child_at)))
        return exprs

    def _walk_function(self, func: types.FunctionType, at: str) -> Any:
        source = self.source
        namespace = self._require_code(func, at)
        cells = ()
        if func.__closure__:
            closure = source.local(f"{at}.__closure__")
            cells = tuple(
                self._walk_cell(c, f"{closure}[{i}]") for i, c in enumerate(func.__closure__)
            )
        defaults = ()
        if func.__defaults__ is None:
            source.require(f"{at}.__defaults__ is None")
        else:
            defaults_at = source.local(f"{at}.__defaults__")
            source.require(f"len({defaults_at}) == {len(func.__defaults__)}")
            defaults = tuple(
                self.walk(d, source.local(f"{defaults_at}[{i}]"))
                for i, d in enumerate(func.__defaults__)
            )
        kwdefaults = sorted((func.__kwdefaults__ or {}).items())
        kwdefaults_at = source.local(f"{at}.__kwdefaults__ or EMPTY")
        source.require(f"len({kwdefaults_at}) == {len(kwdefaults)}")
        kwdefaults = self._walk_items(kwdefaults, kwdefaults_at)
        code, globals_ = func.__code__, func.__globals__
        fixed = [n for n in _global_names(code) if _is_fixed_global(globals_, n)]
        self._require_globals(func, namespace, fixed)
        read = [(n, globals_[n]) for n in _global_names(code) if n not in fixed]
        names = self._walk_items(read, namespace)
        self.pinned.append(globals_)
        self._template(globals_, namespace)
        return ("function", code, id(globals_), func.__name__, cells, defaults, kwdefaults, names)

    def _walk_cell(self, cell: types.CellType, at: str) -> Any:
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell: a variable assigned later
            self.source.require(f"{self.source.constant(_is_empty)}({at})")
            return ("empty",)
        return self.walk(contents, self.source.local(f"{at}.cell_contents"))


_CONCRETE_ARRAY_TYPES = frozenset({type(jax.numpy.zeros(())), np.ndarray})


def is_array(value: Any) -> bool:
    """``isinstance(value, _ARRAY_TYPES)``, with a fast first test (jax.Array's is slow)."""
    return type(value) in _CONCRETE_ARRAY_TYPES or isinstance(value, _ARRAY_TYPES)


def _is_fixed_global(namespace: dict, name: str) -> bool:
    return name not in namespace or isinstance(namespace[name], _FIXED_TYPES)


def _is_empty(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return True
    return False


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
