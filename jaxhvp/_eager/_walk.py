"""What a function reads: a key, its arrays, and the places in the user's objects holding them.

``split(func)`` walks everything ``func`` can reach — closure cells, defaults, function
attributes, the module globals its code names, ``functools.partial`` arguments, a bound
method's ``self``, objects' attributes and slots, the methods and properties of user classes,
dicts, lists and tuples (subclasses included) — and returns a :class:`Split`:

* ``skeleton``: a hashable description of everything that is not an array. Python scalars
  are in it by type and bit pattern (``-0.0`` and ``0.0`` differ, one NaN is one key),
  containers by type, keys (in order) and length, sharing (an object reached twice, or a
  cycle) by reference, and values the walk does not look into (modules, library functions
  and objects) by identity.
* ``leaves``: the arrays found, each once.
* ``nodes``: the containers of this call that hold them, and the ``plan`` (in the skeleton)
  says where: the kernel swaps tracers into exactly those places while it traces
  (``_swap``), so the traced function is the user's own, with its identity, sharing, dict
  order and attribute writes.

A value the walk cannot describe (an object array, a structure deeper than ``MAX_DEPTH``
or larger than ``MAX_NODES``) makes the split :class:`Uncached` with the reason, and the call
runs op by op. Each walk also writes a guard (``_guard``) that re-checks what it read; the
next call of the same function, or of a fresh closure of the same code, is split by the guard.
"""

from __future__ import annotations

import collections
import collections.abc
import enum
import functools
import math
import operator
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from ._guard import MISSING, Source
from ._values import (
    ARRAY_TYPES,
    CLASS_SKIP,
    CONCRETE_ARRAY_TYPES,
    DYNAMIC_NAMES,
    EXACT_SCALARS,
    HIDDEN_STATE_TYPES,
    JAX_ARRAY,
    OPAQUE_TYPES,
    SCALAR_TYPES,
    Same,
    by_identity,
    flatten_one,
    float_matches,
    global_names,
    is_array,
    is_empty,
    is_library,
    is_own,
    is_pytree_leaf,
    key_bits,
    scalar_key,
    slot_names,
    value_key,
    value_like,
)

MAX_NODES = 4096  # values a walk may meet; beyond, the function runs uncached
MAX_DEPTH = 100  # nesting a walk may follow; beyond, the function runs uncached
_MAX_MEMO = 1024  # functions (by memo key) whose latest guards are remembered
_GUARDS_PER_KEY = 4
_BULK_AT = 4  # containers of at least this many arrays are checked with one test


class Uncached(Exception):
    """The function cannot be split; ``reason`` says why, for the warning."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Skeleton:
    """A skeleton with its hash computed once (it is part of every cache key), and the plan
    of where its arrays go (equal skeletons have equal plans)."""

    __slots__ = ("_hash", "has_numpy", "locate", "plan", "root", "tree")

    def __init__(self, tree: Any, plan: tuple, root: Any, has_numpy: bool) -> None:
        self.tree, self.plan, self.root, self.has_numpy = tree, plan, root, has_numpy
        self._hash = hash(tree)
        self.locate: Callable[[Any], list] = list  # func -> its nodes (set by the walk)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            type(other) is Skeleton and self._hash == other._hash and self.tree == other.tree
        )


class Split(tuple):
    """``(skeleton, leaves, func)``: a function's key and arrays. The containers that hold
    the arrays (``nodes``) are only needed while a kernel traces, so they are located then,
    by code the walk wrote, instead of at every call."""

    __slots__ = ()
    skeleton = property(operator.itemgetter(0))
    leaves = property(operator.itemgetter(1))
    func = property(operator.itemgetter(2))

    @property
    def nodes(self) -> list:
        return self[0].locate(self[2])


class Counters:
    """How often functions were walked, and how often recorded guards all rejected one."""

    walks = 0
    guard_misses = 0


_guarded: dict[Any, list[Callable]] = {}  # memo key -> guards of the latest splits, newest first


def split(func: Any) -> Split:
    """The split of ``func``; raises :class:`Uncached` when it cannot be described."""
    key = _memo_key(func)
    guards = _guarded.get(key, ())
    for guard in guards:
        try:
            found = guard(func)
        except Exception:  # e.g. a cell emptied since: the walk decides
            continue
        if found is not None:
            return found
    Counters.walks += 1
    Counters.guard_misses += bool(guards)
    walker = _Walker()
    try:
        tree, root = walker.walk(func, Source.argument, 0)
        tree = (tree, walker.walk_deferred())
        walker.check_library_modules()
    except RecursionError:
        msg = f"it reaches values nested more than {MAX_DEPTH} deep"
        raise Uncached(msg) from None
    skeleton = Skeleton(
        tree,
        tuple(walker.plan),
        root,
        any(isinstance(x, np.ndarray) for x in walker.leaves),
    )
    guard = walker.compile_guard(skeleton)
    if len(_guarded) >= _MAX_MEMO:
        _guarded.clear()
    _guarded[key] = [guard, *_guarded.get(key, ())][:_GUARDS_PER_KEY]
    return Split((skeleton, walker.leaves, func))


def forget() -> None:
    """Drops the recorded guards (and the objects they hold)."""
    _guarded.clear()


def _memo_key(func: Any) -> Any:
    """Functions of one code (fresh closures) share guards; partials and methods by target."""
    kind = type(func)
    if kind is types.FunctionType:
        return func.__code__
    if kind is types.MethodType:
        return kind, _memo_key(func.__func__)
    if isinstance(func, functools.partial):
        return kind, _memo_key(func.func)
    return kind


class _Walker:
    """Splits one function, writing its guard (``Source``) along the way: every decision the
    walk takes on a value is also written as a test on that value.

    ``walk`` returns ``(skeleton, spec)``: ``spec`` is ``None`` when the value can stay where
    it is while tracing (it holds no arrays, or only in places the plan swaps), else how to
    build its stand-in from tracers (``("leaf", i)`` for an array, a rebuilt tuple, ...),
    which the parent's plan entry puts in place.
    """

    def __init__(self) -> None:
        self.source = Source()
        self.leaves: list = []
        self.leaf_exprs: list[str] = []
        self.nodes: list = []
        self.node_exprs: list[str] = []
        self.plan: list[tuple] = []
        self.distinct: list[int] = []  # nodes whose sharing matters: containers, objects
        self.memo: dict[int, tuple[int, str]] = {}  # id -> (node index, guard variable)
        self.leaf_memo: dict[int, tuple[int, str]] = {}
        self.modules: list[tuple[types.ModuleType, str]] = []  # user modules, walked last
        self.module_nodes: dict[int, int] = {}
        self.classes: list[tuple[type, int, str]] = []  # user classes: members walked last
        self.library_modules: list[types.ModuleType] = []  # only checked for random draws
        self.code_names: set[str] = set()
        self.count = 0

    def compile_guard(self, skeleton: Skeleton) -> Callable:
        source = self.source
        leaves, nodes = ", ".join(self.leaf_exprs), ", ".join(self.node_exprs)
        # Sharing is part of the key: the arrays and containers must be as many objects.
        distinct = [self.node_exprs[i] for i in self.distinct]
        ids = [f"*map(id, {e[1:]})" if e.startswith("*") else f"id({e})" for e in self.leaf_exprs]
        ids += [f"id({e})" for e in distinct]
        count = len(self.leaves) + len(distinct)
        singles = [e for e in self.leaf_exprs if not e.startswith("*")] + distinct
        if count > 1 and len(singles) == count and count <= 4:  # a few: pairwise
            pairs = [f"{a} is not {b}" for i, a in enumerate(singles) for b in singles[i + 1 :]]
            source.require(*pairs)
        elif count > 1:
            source.require(f"len({{{', '.join(ids)}}}) == {count}")
        skeleton.locate = source.compile(f"[{nodes}]")
        split, argument = source.constant(Split), source.argument
        return source.compile(f"{split}(({source.constant(skeleton)}, [{leaves}], {argument}))")

    # -- helpers -------------------------------------------------------------------------
    def _node(self, value: Any, at: str, distinct: bool = True) -> int:
        index = len(self.nodes)
        self.nodes.append(value)
        self.node_exprs.append(at)
        self.memo[id(value)] = (index, at)
        if distinct:
            self.distinct.append(index)
        return index

    def _forget_last_node(self, value: Any) -> None:
        index = self.memo.pop(id(value))[0]
        self.nodes.pop(), self.node_exprs.pop()
        if self.distinct and self.distinct[-1] == index:
            self.distinct.pop()

    def _same(self, value: Any, at: str) -> tuple:
        self.source.require(f"{at} is {self.source.constant(value)}")
        return ("same", Same(value)), None

    def _require_type(self, value: Any, at: str) -> None:
        self.source.require(f"type({at}) is {self.source.constant(type(value))}")

    # -- the walk ------------------------------------------------------------------------
    def walk(self, value: Any, at: str, depth: int) -> tuple[Any, Any]:
        self.count += 1
        if self.count > MAX_NODES:
            msg = f"it reads more than {MAX_NODES} Python values"
            raise Uncached(msg)
        if depth > MAX_DEPTH:
            msg = f"it reaches values nested more than {MAX_DEPTH} deep"
            raise Uncached(msg)
        source = self.source
        if isinstance(value, ARRAY_TYPES):
            return self._walk_array(value, at)
        if type(value) in EXACT_SCALARS or isinstance(value, enum.Enum):
            return self._walk_scalar(value, at)
        if isinstance(value, SCALAR_TYPES):  # a subclass of a number or string
            if getattr(value, "__dict__", None):
                msg = f"it reads a {type(value).__name__}: a number or string with attributes"
                raise Uncached(msg)
            return self._walk_scalar(value, at)
        if isinstance(value, types.BuiltinMethodType):
            owner = value.__self__
            if is_array(owner):
                msg = "it reads a method bound to an array (such as x.sum)"
                raise Uncached(msg)
            if isinstance(owner, HIDDEN_STATE_TYPES):
                msg = f"it calls a method of a {type(owner).__name__}, whose state changes"
                raise Uncached(msg)
        if isinstance(value, types.ModuleType):
            self.source.require(f"{at} is {self.source.constant(value)}")
            if is_library(value):
                self.library_modules.append(value)
            else:
                self.modules.append((value, at))
            return ("module", Same(value)), None
        if isinstance(value, OPAQUE_TYPES) or value is MISSING:
            return self._same(value, at)
        seen = self.memo.get(id(value))
        if seen is not None:
            source.require(f"{at} is {seen[1]}")
            return ("ref", seen[0]), None
        if isinstance(value, (set, frozenset)):
            return self._walk_set(value, at)
        if isinstance(value, type):
            return self._walk_class(value, at, depth)
        if isinstance(value, types.FunctionType):
            return self._walk_function(value, at, depth)
        if isinstance(value, types.MethodType):
            self._require_type(value, at)
            self._node(value, at, distinct=False)
            func, func_spec = self.walk(value.__func__, source.local(f"{at}.__func__"), depth + 1)
            owner, owner_spec = self.walk(value.__self__, source.local(f"{at}.__self__"), depth + 1)
            if func_spec is not None or owner_spec is not None:
                msg = "it is a bound method of a tuple or of an array"
                raise Uncached(msg)
            return ("method", func, owner), None
        if isinstance(value, functools.partial):
            return self._walk_partial(value, at, depth)
        if type(value) in (dict, list, tuple):
            return self._walk_container(value, at, depth, ())
        if isinstance(value, enum.Enum):
            return self._same(value, at)
        if isinstance(value, HIDDEN_STATE_TYPES):
            msg = (
                f"it reads a {type(value).__name__}, whose state the walk cannot see or "
                "which changes as it is used"
            )
            raise Uncached(msg)
        if value_like(value):
            self.source.require(f"{at} == {self.source.constant(value)}")
            return ("value", value), None
        if type(value).__name__ == "HashablePartial" and is_library(type(value)):
            return self._walk_object(value, at, depth)  # ravel_pytree's unravel: f, args
        if is_library(type(value)) and not is_own(value) and is_pytree_leaf(value):
            return self._walk_library(value, at, depth)
        return self._walk_object(value, at, depth)

    def _walk_array(self, value: Any, at: str) -> tuple:
        source = self.source
        seen = self.leaf_memo.get(id(value))
        if seen is not None:
            source.require(f"{at} is {seen[1]}")
            return ("array", seen[0]), ("leaf", seen[0])
        if (
            isinstance(value, np.ndarray)
            and type(value) is not np.ndarray
            and not is_library(type(value))
        ):  # JAX's own subclasses (literals of a traced program) are arrays
            msg = f"it reads a {type(value).__name__} (a numpy array subclass)"
            raise Uncached(msg)
        if isinstance(value, np.ndarray) and value.dtype.kind not in "biufc":
            if value.dtype.kind == "O":
                msg = "it reads a numpy array of Python objects"
                raise Uncached(msg)
            # Strings, bytes, dates: constants by value, as jax.jit would bake them.
            data = value.tobytes()
            source.require(
                f"type({at}) is {source.constant(type(value))}",
                f"{at}.dtype == {source.constant(value.dtype)}",
                f"{at}.shape == {value.shape!r}",
                f"{at}.tobytes() == {source.constant(data)}",
            )
            return ("text array", value.dtype.str, value.shape, data), None
        if type(value) in CONCRETE_ARRAY_TYPES:  # numpy stays numpy: it decides has_numpy
            source.require(f"type({at}) is {source.constant(type(value))}")
        else:
            source.require(f"IS_ARRAY({at})")
        index = len(self.leaves)
        self.leaves.append(value)
        self.leaf_exprs.append(at)
        self.leaf_memo[id(value)] = (index, at)
        return ("array", index), ("leaf", index)

    def _walk_scalar(self, value: Any, at: str) -> tuple:
        source = self.source
        kind = source.constant(type(value))
        if type(value) is float:
            test = float_matches(value)(at, source.constant(value))
        elif isinstance(value, (complex, np.generic)):
            key = source.constant(scalar_key(value))
            test = f"SCALAR_KEY({at}) == {key}"
        else:
            test = f"{at} == {source.constant(value)}"
        source.require(f"type({at}) is {kind}", test)
        return ("const", type(value), scalar_key(value)), None

    def _walk_set(self, value: Any, at: str) -> tuple:
        """A set of values (scalars, tuples of them): in the key by value, type and bits."""
        try:
            key = value_key(value)
        except TypeError:
            msg = "it reads a set of objects"
            raise Uncached(msg) from None
        self.source.require(f"VALUE_KEY({at}) == {self.source.constant(key)}")
        return ("set", key), None

    def _walk_items(self, pairs: list, node: int, at: str, depth: int, getter: str) -> tuple:
        """Walks ``(key, value)`` pairs of the mutable container ``node``; the plan swaps the
        values that hold arrays. ``getter`` reads one: ``f"{getter}({at}, key)"``."""
        source = self.source
        values = [v for _, v in pairs]
        if (
            len(values) >= _BULK_AT
            and all(isinstance(v, ARRAY_TYPES) for v in values)
            and all(id(v) not in self.leaf_memo for v in values)
            and len({id(v) for v in values}) == len(values)
            and all(type(v) is JAX_ARRAY for v in values)
        ):
            return self._walk_bulk(pairs, node, at, getter)
        walked = []
        for key, item in pairs:
            key_at = source.constant(key)
            item_at = f"{getter}({at}, {key_at}{_default(getter)})"
            if not by_identity(item):  # read more than once: held in a variable
                item_at = source.local(item_at)
            skeleton, spec = self.walk(item, item_at, depth + 1)
            if spec is not None:
                self.plan.append((node, "item", key, spec))
            walked.append(skeleton)
        return tuple(walked)

    def _walk_bulk(self, pairs: list, node: int, at: str, getter: str) -> tuple:
        """Many arrays in one container (a parameter dict): one test for all of them."""
        source = self.source
        keys = source.constant(tuple(k for k, _ in pairs))
        values = source.local(f"[{getter}({at}, k{_default(getter)}) for k in {keys}]")
        source.require(f"all(map(IS_JAX_ARRAY, {values}))")
        first = len(self.leaves)
        for position, (key, value) in enumerate(pairs):
            index = first + position
            self.leaves.append(value)
            self.leaf_memo[id(value)] = (index, f"{values}[{position}]")
            self.plan.append((node, "item", key, ("leaf", index)))
        self.leaf_exprs.append(f"*{values}")
        self.count += len(pairs)
        return (("bulk", first, len(pairs)),)

    def _walk_container(self, value: Any, at: str, depth: int, extra: tuple) -> tuple:
        """A dict, list or tuple, or an instance of a subclass of one (then ``extra`` holds
        the walk of its attributes)."""
        source = self.source
        self._require_type(value, at)
        source.require(f"len({at}) == {len(value)}")
        kind = type(value)
        if isinstance(value, dict):
            node = self._node(value, at)
            keys = tuple(value)
            source.require(f"tuple({at}) == {source.constant(keys)}")
            if any(type(k) is not str for k in keys):  # 1, 1.0 and True are equal keys
                types_ = source.constant(tuple(map(type, keys)))
                source.require(f"tuple(map(type, {at})) == {types_}")
            if any(type(k) in (float, complex) and not (k == k and k != 0) for k in keys):
                source.require(f"KEY_BITS({at}) == {source.constant(key_bits(keys))}")
            walked = self._walk_items(list(dict.items(value)), node, at, depth, "DGET")
            tagged = tuple((type(k), key_bits((k,))) for k in keys)
            return ("dict", kind, tagged, walked, extra), None
        if isinstance(value, list):
            node = self._node(value, at)
            pairs = list(enumerate(list.__iter__(value)))
            walked = self._walk_items(pairs, node, at, depth, "LIST_GET")
            return ("list", kind, walked, extra), None
        # A tuple: immutable, so a tuple holding arrays is rebuilt around tracers.
        children, specs = [], []
        for i, item in enumerate(tuple.__iter__(value)):
            skeleton, spec = self.walk(item, source.local(f"TUPLE_GET({at}, {i})"), depth + 1)
            children.append(skeleton)
            if spec is not None:
                specs.append((i, spec))
        spec = None
        if specs:
            index = len(self.nodes)
            self.nodes.append(value)
            self.node_exprs.append(at)
            spec = ("tuple", index, tuple(specs))
        return ("tuple", kind, tuple(children), extra), spec

    def _walk_function(self, func: types.FunctionType, at: str, depth: int) -> tuple:
        source = self.source
        library = is_library(func)
        self._require_type(func, at)
        source.require(f"{at}.__code__ is {source.constant(func.__code__)}")
        node = self._node(func, at, distinct=False)
        cells = ()
        if func.__closure__:
            closure = source.local(f"{at}.__closure__")
            source.require(f"len({closure}) == {len(func.__closure__)}")
            cells = tuple(
                self._walk_cell(c, source.local(f"{closure}[{i}]"), depth)
                for i, c in enumerate(func.__closure__)
            )
        else:
            source.require(f"{at}.__closure__ is None")
        defaults = kwdefaults = attributes = None
        if not (func.__defaults__ or func.__kwdefaults__ or func.__dict__):  # the usual case
            source.require(f"not ({at}.__defaults__ or {at}.__kwdefaults__ or {at}.__dict__)")
        elif func.__defaults__ is None:
            source.require(f"{at}.__defaults__ is None")
        else:
            defaults, spec = self.walk(
                func.__defaults__, source.local(f"{at}.__defaults__"), depth + 1
            )
            if spec is not None:
                self.plan.append((node, "attr", "__defaults__", spec))
        if func.__defaults__ or func.__kwdefaults__ or func.__dict__:
            kwdefaults = self._walk_optional_dict(
                func.__kwdefaults__, f"{at}.__kwdefaults__", depth
            )
            attributes = self._walk_optional_dict(
                func.__dict__ or None, f"{at}.__dict__ or None", depth
            )
        names = ()
        if not library and DYNAMIC_NAMES.intersection(func.__code__.co_names):
            msg = "it reads variables by name at run time (globals(), eval, exec or vars)"
            raise Uncached(msg)
        if not library:  # library functions' globals are the library's
            namespace = func.__globals__
            source.require(f"{at}.__globals__ is {source.constant(namespace)}")
            seen = self.memo.get(id(namespace))
            if seen is None:
                globals_node = self._node(namespace, source.local(f"{at}.__globals__"), False)
                globals_at = self.node_exprs[globals_node]
            else:
                globals_node, globals_at = seen
            pairs = [(n, namespace.get(n, MISSING)) for n in global_names(func.__code__)]
            self.code_names.update(global_names(func.__code__))
            names = self._walk_items(pairs, globals_node, globals_at, depth, "DGET")
            names = (Same(namespace), names)
        return ("function", func.__code__, cells, defaults, kwdefaults, attributes, names), None

    def check_library_modules(self) -> None:
        """Library modules are taken as fixed, except for the random draws some of them
        offer (``random.random``, ``np.random.rand``): code that names one runs uncached."""
        pending, seen = list(self.library_modules), set()
        while pending:
            module = pending.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            for name in self.code_names:
                member = module.__dict__.get(name)
                if isinstance(member, types.ModuleType):
                    pending.append(member)
                elif isinstance(getattr(member, "__self__", None), HIDDEN_STATE_TYPES):
                    msg = f"it draws random numbers with {module.__name__}.{name}"
                    raise Uncached(msg)

    def walk_deferred(self) -> tuple:
        """User modules and the members of user classes, walked last, for the names that
        any code walked may use (``config.W``, ``self.helper``: the names in its code,
        present or absent) and, for classes, the special methods Python calls implicitly.
        Walking them may meet more code, modules and classes: repeated until nothing new."""
        source, walked, done = self.source, [], {}
        progress = True
        while progress:
            progress = False
            for module, at in list(self.modules):
                namespace = module.__dict__
                seen = done.get(id(module))
                if seen is None:
                    seen = done[id(module)] = set()
                    node = self._node(namespace, source.local(f"{at}.__dict__"), False)
                    self.module_nodes[id(module)] = node
                node = self.module_nodes[id(module)]
                names = sorted(n for n in self.code_names - seen if not n.startswith("__"))
                if names:
                    seen.update(names)
                    pairs = [(n, namespace.get(n, MISSING)) for n in names]
                    at_dict = self.node_exprs[node]
                    walked.append(self._walk_items(pairs, node, at_dict, 0, "DGET"))
                    progress = True
            for cls, node, namespace in list(self.classes):
                seen = done.setdefault(id(cls), set())
                for name, member in list(cls.__dict__.items()):
                    if name in seen or not self._member_used(cls, name, member):
                        continue
                    seen.add(name)
                    walked.append((name, self._walk_member(node, namespace, name, member)))
                    progress = True
        return tuple(walked)

    def _member_used(self, cls: type, name: str, member: Any) -> bool:
        """Whether a class member may run or be read: named by the code walked, or a
        special method (the constructor's only when the code names the class)."""
        if name in CLASS_SKIP or isinstance(member, OPAQUE_TYPES):
            return False
        if not (name.startswith("__") and name.endswith("__")):
            return name in self.code_names
        if name in ("__init__", "__new__", "__post_init__", "__init_subclass__"):
            return cls.__name__ in self.code_names
        return callable(member) and name not in ("__repr__", "__str__", "__del__", "__format__")

    def _walk_member(self, node: int, namespace: str, name: str, member: Any) -> Any:
        source = self.source
        member_at = source.local(f"{namespace}.get({source.constant(name)}, MISSING)")
        if isinstance(member, (staticmethod, classmethod)):
            self._require_type(member, member_at)
            inner = source.local(f"{member_at}.__func__")
            skeleton, spec = self.walk(member.__func__, inner, 1)
        elif isinstance(member, property):
            self._require_type(member, member_at)
            parts = ("fget", "fset", "fdel")
            at = [source.local(f"{member_at}.{part}") for part in parts]
            skeleton = tuple(self.walk(getattr(member, p), a, 1)[0] for p, a in zip(parts, at))
            spec = None
        else:
            skeleton, spec = self.walk(member, member_at, 1)
        if spec is not None:
            self.plan.append((node, "class", name, spec))
        return skeleton

    def _walk_optional_dict(self, mapping: dict | None, expression: str, depth: int) -> Any:
        source = self.source
        if mapping is None:
            source.require(f"({expression}) is None")
            return None
        return self.walk(mapping, source.local(expression), depth + 1)[0]

    def _walk_cell(self, cell: types.CellType, at: str, depth: int) -> Any:
        source = self.source
        seen = self.memo.get(id(cell))
        if seen is not None:
            source.require(f"{at} is {seen[1]}")
            return ("ref", seen[0])
        node = self._node(cell, at)
        self.distinct.pop()  # two closures may come to share a cell: nothing can tell
        if is_empty(cell):  # a variable assigned later
            source.require(f"IS_EMPTY({at})")
            return ("empty",)
        skeleton, spec = self.walk(
            cell.cell_contents, source.local(f"{at}.cell_contents"), depth + 1
        )
        if spec is not None:
            self.plan.append((node, "cell", None, spec))
        return ("cell", skeleton)

    def _walk_partial(self, value: functools.partial, at: str, depth: int) -> tuple:
        source = self.source
        self._require_type(value, at)
        cls = type(value)
        cls_skeleton = self.walk(cls, source.constant(cls), depth + 1)[0]  # a subclass's call
        node = self._node(value, at)
        func, func_spec = self.walk(value.func, source.local(f"{at}.func"), depth + 1)
        args, args_spec = self.walk(value.args, source.local(f"{at}.args"), depth + 1)
        keywords = self.walk(value.keywords, source.local(f"{at}.keywords"), depth + 1)[0]
        attributes = self._walk_optional_dict(
            value.__dict__ or None, f"{at}.__dict__ or None", depth
        )
        if func_spec is not None or args_spec is not None:
            self.plan.append((node, "partial", None, (func_spec, args_spec)))
        return ("partial", cls_skeleton, func, args, keywords, attributes), None

    def _walk_class(self, cls: type, at: str, depth: int) -> tuple:
        """A class: by identity; the members of a user class that the code may use are
        walked at the end (``walk_deferred``), as are its bases and metaclass."""
        source = self.source
        source.require(f"{at} is {source.constant(cls)}")
        if is_library(cls) or cls.__module__ == "builtins":
            return ("same", Same(cls)), None
        node = self._node(cls, at, distinct=False)
        items = []
        for base in (*cls.__mro__[1:], type(cls)):  # fixed while the class is
            if not is_library(base):
                items.append(self.walk(base, source.constant(base), depth + 1)[0])
        namespace = source.local(f"{at}.__dict__")
        source.require(f"len({namespace}) == {len(cls.__dict__)}")
        self.classes.append((cls, node, namespace))
        return ("class", Same(cls), tuple(items)), None

    def _walk_library(self, value: Any, at: str, depth: int) -> tuple:
        """A library object other than a pytree (those are walked as user objects): by
        identity, but what it wraps (``__wrapped__``: jax.jit of a user function, a
        custom_jvp) is walked."""
        skeleton = self._same(value, at)[0]
        attributes = getattr(value, "__dict__", None)
        if type(attributes) is dict and "__wrapped__" in attributes:
            wrapped = self.source.local(f"{at}.__dict__.get('__wrapped__', MISSING)")
            inner, spec = self.walk(attributes["__wrapped__"], wrapped, depth + 1)
            if spec is not None:
                msg = "it reads a library object that wraps arrays"
                raise Uncached(msg)
            return ("library", skeleton, inner), None
        return skeleton, None

    def _walk_object(self, value: Any, at: str, depth: int) -> tuple:
        """A user object: its class (methods included), its ``__dict__`` and its slots; or,
        for a registered pytree with neither, its flattened children."""
        source = self.source
        cls = type(value)
        self._require_type(value, at)
        cls_skeleton = self.walk(cls, source.constant(cls), depth + 1)[0]
        if isinstance(value, (dict, list, tuple)):  # a subclass of a container
            return self._walk_subclass(value, at, depth, cls_skeleton)
        node = self._node(value, at)
        attributes = getattr(value, "__dict__", None)
        walked_dict = None
        if type(attributes) is dict:
            walked_dict = self.walk(attributes, source.local(f"{at}.__dict__"), depth + 1)[0]
        slots = []
        for name, descriptor in slot_names(cls):
            try:
                item = descriptor.__get__(value, cls)
            except AttributeError:
                item = MISSING
            item_at = source.local(f"SLOT_GET({source.constant(descriptor)}, {at})")
            skeleton, spec = self.walk(item, item_at, depth + 1)
            if spec is not None:
                self.plan.append((node, "slot", descriptor, spec))
            slots.append((name, skeleton))
        if walked_dict is None and not slots:
            return self._walk_opaque(value, at, depth, cls_skeleton)
        return ("object", cls_skeleton, walked_dict, tuple(slots)), None

    def _walk_subclass(self, value: Any, at: str, depth: int, cls_skeleton: Any) -> tuple:
        """An instance of a dict, list or tuple subclass: its items and its attributes."""
        attributes = getattr(value, "__dict__", None)
        walked_dict = None
        if type(attributes) is dict and attributes:
            if isinstance(value, tuple):
                msg = f"it reads a {type(value).__name__}: a tuple subclass with attributes"
                raise Uncached(msg)
            walked_dict = self.walk(attributes, self.source.local(f"{at}.__dict__"), depth + 1)[0]
        elif type(attributes) is dict:
            self.source.require(f"not {at}.__dict__")
        factory = None
        if isinstance(value, collections.defaultdict):
            where = self.source.local(f"{at}.default_factory")
            factory, spec = self.walk(value.default_factory, where, depth + 1)
            if spec is not None:
                msg = "it reads a defaultdict whose default factory holds arrays"
                raise Uncached(msg)
        return self._walk_container(value, at, depth, (cls_skeleton, walked_dict, factory))

    def _walk_opaque(self, value: Any, at: str, depth: int, cls_skeleton: Any) -> tuple:
        """An object without attributes: a registered pytree's children are walked (and
        rebuilt around tracers); anything else is taken by identity."""
        source = self.source
        children, treedef = flatten_one(value)
        if treedef.num_nodes == 1 and treedef.num_leaves == 1:
            self._forget_last_node(value)
            return self._same(value, at)
        flat = source.local(f"FLATTEN({at})")
        source.require(f"{flat}[1] == {source.constant(treedef)}")
        walked, specs = [], []
        for i, child in enumerate(children):
            skeleton, spec = self.walk(child, source.local(f"{flat}[0][{i}]"), depth + 1)
            walked.append(skeleton)
            if spec is not None:
                specs.append((i, spec))
        spec = ("tree", self.memo[id(value)][0], tuple(specs)) if specs else None
        return ("pytree", cls_skeleton, treedef, tuple(walked)), spec


Source.namespace_defaults = {
    "IS_ARRAY": is_array,
    "SCALAR_KEY": scalar_key,
    "COPYSIGN": math.copysign,
    "DGET": dict.get,
    "LIST_GET": list.__getitem__,
    "TUPLE_GET": tuple.__getitem__,
    "SLOT_GET": lambda descriptor, obj: _slot_get(descriptor, obj),
    "IS_EMPTY": is_empty,
    "IS_JAX_ARRAY": lambda x: type(x) is JAX_ARRAY,
    "VALUE_KEY": value_key,
    "KEY_BITS": key_bits,
    "FLATTEN": flatten_one,
}


def _default(getter: str) -> str:
    """The default argument of a guard's getter (``dict.get`` returns ``MISSING``)."""
    return ", MISSING" if getter == "DGET" else ""


def _slot_get(descriptor: Any, obj: Any) -> Any:
    try:
        return descriptor.__get__(obj, type(obj))
    except AttributeError:
        return MISSING
