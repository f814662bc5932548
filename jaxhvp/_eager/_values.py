"""The values a walk meets: what kind each is, and how it enters a cache key.

Arrays are leaves; Python scalars are keys by type and bit pattern (``scalar_key``; sets,
tuples and dict keys of them by ``value_key``); modules, builtins and library functions are
kept by identity (``Same``); objects whose state the walk cannot see (iterators, random
generators, weak references) make a function run uncached. ``without_values`` and
``describe_change`` compare skeletons for the recompile limit and its warning.
"""

from __future__ import annotations

import collections
import collections.abc
import enum
import functools
import math
import random
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ._guard import MISSING
from ._jax import ARRAY_TYPE

ARRAY_TYPES = (jax.Array, np.ndarray)
SCALAR_TYPES = (bool, int, float, complex, str, bytes, type(None), np.generic, np.dtype)
EXACT_SCALARS = frozenset(
    {bool, int, float, complex, str, bytes, type(None), np.dtype}
    | {t for t in np.sctypeDict.values() if isinstance(t, type) and issubclass(t, np.generic)}
)
OPAQUE_TYPES = (
    types.ModuleType,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
    types.CodeType,
    type(Ellipsis),
    type(NotImplemented),
    range,
    slice,
)
# Functions and objects of these packages are kept by identity; their wrappers' targets and
# their functions' closures are walked (jax.grad(f) closes over f).
LIBRARY_PACKAGES = frozenset(
    {
        "jax",
        "jaxlib",
        "numpy",
        "scipy",
        "flax",
        "equinox",
        "optax",
        "builtins",
        "abc",
        "enum",
        "typing",
        "functools",
        "dataclasses",
        "jaxhvp",
        # Objects for logging, locks, files and processes: no numbers a loss computes with.
        "logging",
        "threading",
        "warnings",
        "re",
        "io",
        "pathlib",
        "os",
        "socket",
        "subprocess",
    }
)
# Objects whose state is hidden from the walk and changes at every use.
HIDDEN_STATE_TYPES = (
    random.Random,
    np.random.Generator,
    np.random.RandomState,
    np.random.BitGenerator,
    types.GeneratorType,
    types.CoroutineType,
    collections.abc.Iterator,  # iterators, itertools.count(), map objects: state advances
    collections.deque,
    weakref.ref,
    types.MappingProxyType,
    functools._lru_cache_wrapper,  # its cache would keep tracers
)
DYNAMIC_NAMES = frozenset({"globals", "eval", "exec", "vars"})

CLASS_SKIP = frozenset(
    {
        "__dict__",
        "__weakref__",
        "__module__",
        "__doc__",
        "__qualname__",
        "__slots__",
        "__annotations__",
        "__dataclass_fields__",
        "__dataclass_params__",
        "__match_args__",
        "__firstlineno__",
        "__static_attributes__",
        "__orig_bases__",
        "__parameters__",
        "_abc_impl",
        "__abstractmethods__",
        "__hash__",
        "__annotate_func__",
        "__annotations_cache__",
    }
)


class Same:
    """A value in a skeleton by identity (kept alive by the skeleton, so its id stays its own)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is Same and other.value is self.value

    def __hash__(self) -> int:
        return id(self.value)

    def __repr__(self) -> str:
        return f"Same({self.value!r:.60})"


def is_array(value: Any) -> bool:
    """``isinstance(value, (jax.Array, np.ndarray))``, with a fast first test."""
    return type(value) in CONCRETE_ARRAY_TYPES or isinstance(value, ARRAY_TYPES)


JAX_ARRAY = ARRAY_TYPE  # type(jnp.zeros(())), without starting the backend at import
CONCRETE_ARRAY_TYPES = frozenset({JAX_ARRAY, np.ndarray})


def value_key(value: Any) -> Any:
    """``scalar_key`` through tuples and sets, with types; ``TypeError`` for anything else."""
    kind = type(value)
    if kind in (tuple, frozenset, set):
        keys = map(value_key, value)
        return (kind, frozenset(keys) if kind is not tuple else tuple(keys))
    if kind in EXACT_SCALARS or isinstance(value, enum.Enum):
        return (kind, scalar_key(value))
    raise TypeError(kind)


def scalar_key(value: Any) -> Any:
    """A key equal for two scalars exactly when they are the same value, bit for bit."""
    if type(value) is float:
        return value.hex()
    if isinstance(value, complex):
        return (value.real.hex(), value.imag.hex())
    if isinstance(value, np.generic):
        return (value.dtype.str, value.tobytes())
    return value


class Static(tuple):
    """jaxhvp's own static choices that select a different program (the leaves a block
    operator picks): compared by equality, and part of a kernel's family, so that many of
    them are many programs, not one Python value that keeps changing."""

    __slots__ = ()


def value_like(value: Any) -> bool:
    """Values compared by equality rather than identity: a fresh ``PyTreeDef``
    (``jax.tree.flatten`` at every step) is the same structure; a :class:`Static`."""
    return isinstance(value, (jax.tree_util.PyTreeDef, Static))


def is_library(obj: Any) -> bool:
    if isinstance(obj, types.ModuleType):
        return is_library_module(obj)
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return False
    return module.partition(".")[0] in LIBRARY_PACKAGES


def is_library_module(module: types.ModuleType) -> bool:
    """jax, numpy and the like, and Python's own modules (math, os): by identity."""
    name = module.__name__.partition(".")[0]
    return name in LIBRARY_PACKAGES or name in sys.stdlib_module_names


def by_identity(value: Any) -> bool:
    """Values the walk only tests with ``is`` (its guard reads them once)."""
    return value is MISSING or (
        isinstance(value, OPAQUE_TYPES)
        and not isinstance(value, (types.ModuleType, types.BuiltinMethodType))
    )


def is_own(value: Any) -> bool:
    """Objects of jaxhvp itself are walked (a batch operator's product holds the loss)."""
    return type(value).__module__.startswith("jaxhvp.")


def global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names the code (and code nested in it: lambdas, comprehensions) may read as globals."""
    known = names_by_code.get(code)
    if known is not None:
        return known
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(global_names(const))
    if len(names_by_code) >= 4096:
        names_by_code.clear()
    names_by_code[code] = result = tuple(sorted(names))
    return result


names_by_code: dict[types.CodeType, tuple[str, ...]] = {}


def is_empty(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return True
    return False


def float_matches(value: float) -> Callable[[str, str], str]:
    """The guard's test that a float is ``value`` bit for bit (sign of zero, NaN)."""
    if value != value:
        return lambda at, _: f"{at} != {at}"
    if value == 0.0:
        sign = math.copysign(1.0, value)
        return lambda at, k: f"{at} == 0.0 and COPYSIGN(1.0, {at}) == {sign!r}"
    return lambda at, k: f"{at} == {k}"


def slot_names(cls: type) -> list[tuple[str, Any]]:
    """``(name, member descriptor)`` of every ``__slots__`` entry along the class's MRO."""
    found = []
    for base in cls.__mro__:
        slots = base.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            descriptor = base.__dict__.get(name)
            if isinstance(descriptor, types.MemberDescriptorType):
                found.append((name, descriptor))
    return found


def without_values(tree: Any) -> Any:
    """A skeleton's tree with the Python values left out: what stays the same when only a
    closed-over number (or string) changes from call to call."""
    if type(tree) is Same:
        return type(tree.value)
    if type(tree) is not tuple:
        return tree
    tag = tree[:1]
    if tag == ("const",):
        return ("const", tree[1])
    if tag in (("set",), ("text array",)):
        return tag
    if tag == ("dict",):  # the keys are values too
        return ("dict", tree[1], len(tree[2]), *map(without_values, tree[3:]))
    return tuple(map(without_values, tree))


def describe_change(old: Any, new: Any) -> str | None:
    """The first Python value that differs between two skeletons' trees, in words."""
    if type(old) is not tuple or type(new) is not tuple:
        return None
    if old[:1] == new[:1] == ("const",) and old != new:
        kind = new[1]
        values = [float.fromhex(k) if kind is float else k for k in (old[2], new[2])]
        return f"a closed-over {kind.__name__} ({values[0]!r}, then {values[1]!r})"
    for a, b in zip(old, new):
        found = describe_change(a, b)
        if found:
            return found
    return None


def key_bits(keys: Any) -> tuple:
    """Dict keys as the skeleton holds them: values by type and bits where possible."""
    found = []
    for key in keys:
        try:
            found.append(value_key(key))
        except TypeError:
            found.append(Same(key))
    return tuple(found)


def is_pytree_leaf(value: Any) -> bool:
    treedef = flatten_one(value)[1]
    return treedef.num_nodes == 1 and treedef.num_leaves == 1


def flatten_one(value: Any) -> tuple[list, Any]:
    return jax.tree_util.tree_flatten(value, is_leaf=lambda x: x is not value)
