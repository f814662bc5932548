"""The torch-style adapter: which ``inputs`` and ``v`` are accepted, and how ``func`` is called.

The rule, generalising ``torch.autograd.functional``:

* a single array ``x`` is passed as ``func(x)``;
* a plain ``tuple`` is unpacked, ``func(*inputs)``, and products come back as a tuple of the
  same length (a 1-tuple stays a 1-tuple);
* any other pytree (dict, list, NamedTuple, registered dataclass, module) is passed as one
  argument, ``func(inputs)``, and products come back with exactly its structure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import HVPError
from ._frameworks import framework_error
from ._sharding import tangent_layout
from ._structure import difference

_ARRAY_TYPES = (jax.Array, np.ndarray)
_ACCEPTED = (
    "jaxhvp accepts a jax.Array or numpy.ndarray, a tuple of them (called as func(*inputs)), "
    "or any other pytree of them (called as func(inputs)); wrap Python numbers with "
    "jnp.asarray(...)."
)


def is_array(x: Any) -> bool:
    return isinstance(x, _ARRAY_TYPES)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Validated ``inputs``: the primal pytree and how ``func`` is called on it."""

    primals: Any
    is_tuple: bool
    fn_name: str

    def call(self, func: Callable, primals: Any) -> Any:
        return func(*primals) if self.is_tuple else func(primals)

    def leaf_name(self, index: int) -> str:
        """Torch's 'input {i}', with the pytree path where the index alone is ambiguous."""
        if is_array(self.primals) or (self.is_tuple and all(is_array(x) for x in self.primals)):
            return str(index)
        path, _ = jax.tree_util.tree_flatten_with_path(self.primals)[0][index]
        return f"{index} (inputs{jax.tree_util.keystr(path)})"


def as_inputs(inputs: Any, fn_name: str, *, forward: bool = False) -> Inputs:
    """Checks ``inputs`` as torch does (types, then dtypes) and converts numpy leaves.

    ``forward`` words a non-floating dtype as torch's forward-mode ``hessian`` does.
    """
    spec = _checked_inputs(inputs, fn_name, forward)
    _require_arrays(spec)
    return spec


def as_primals_and_tangents(inputs: Any, v: Any, fn_name: str) -> tuple[Inputs, Any]:
    """``hvp``'s and ``vhp``'s ``inputs`` and ``v``, checked in torch's order.

    Torch checks the types and dtypes of ``inputs``, then ``v``; so ``v=None`` with no array
    in ``inputs`` reports ``v``.
    """
    spec = _checked_inputs(inputs, fn_name, forward=False)
    vector = as_tangents(v, spec)
    _require_arrays(spec)
    return spec, vector


def check_input_types(inputs: Any, fn_name: str) -> None:
    """torch's first check: ``inputs`` is an array, a tuple of them, or (jaxhvp) a pytree."""
    _check_leaf_types(inputs, "inputs", fn_name)


def _checked_inputs(inputs: Any, fn_name: str, forward: bool) -> Inputs:
    check_input_types(inputs, fn_name)
    primals = jax.tree_util.tree_map(jnp.asarray, inputs)
    for path, x in jax.tree_util.tree_flatten_with_path(primals)[0]:
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            _raise_for_framework(HVPError, primals, path, x, "inputs", fn_name)
        _check_float_dtype(x, f"inputs{jax.tree_util.keystr(path)}", fn_name, forward)
    return Inputs(primals, type(inputs) is tuple, fn_name)


def _require_arrays(inputs: Inputs) -> None:
    if not jax.tree_util.tree_leaves(inputs.primals):
        msg = (
            f"The inputs given to {inputs.fn_name} must contain at least one array, but got "
            f"{inputs.primals!r}, which has no array leaves."
        )
        raise HVPError(msg)


def as_tangents(v: Any, inputs: Inputs) -> Any:
    """Checks ``v`` against ``inputs`` with torch's rules and wording; returns it as jax arrays."""
    fn_name, primals = inputs.fn_name, inputs.primals
    if v is None:
        leaves = jax.tree_util.tree_leaves(primals)
        if len(leaves) != 1 or leaves[0].size != 1:
            msg = (
                "The vector v can only be None if the input to the user-provided function is "
                "a single Tensor with a single element."
            )
            raise HVPError(msg)
        return jax.tree_util.tree_map(jnp.ones_like, primals)

    _check_vector_types(v, inputs)
    if is_array(primals) and type(v) is tuple:  # torch accepts a 1-tuple holding the vector
        if len(v) != 1:
            msg = "The given v should contain a single Tensor."
            raise HVPError(msg)
        (v,) = v
    if inputs.is_tuple:
        if is_array(v):
            v = (v,)
        if len(v) != len(primals):
            msg = f"v is a tuple of invalid length: should be {len(primals)} but got {len(v)}."
            raise HVPError(msg)

    if jax.tree_util.tree_structure(v) != jax.tree_util.tree_structure(primals):
        msg = (
            f"v must have the same pytree structure as the inputs given to {fn_name}, but "
            f"{difference(primals, v, 'inputs', 'v')}. Build v with jax.tree_util.tree_map "
            "over the inputs."
        )
        raise HVPError(msg)
    v = jax.tree_util.tree_map(jnp.asarray, v)
    pairs = list(
        zip(jax.tree_util.tree_flatten_with_path(v)[0], jax.tree_util.tree_leaves(primals))
    )
    for (path, vi), xi in pairs:  # torch checks every size; dtypes are jaxhvp's check, after
        if vi.shape != xi.shape:
            msg = (
                f"{_entry_prefix(inputs, path)}v has invalid size: should be {tuple(xi.shape)} "
                f"but got {tuple(vi.shape)}."
            )
            raise HVPError(msg)
    for (path, vi), xi in pairs:
        if vi.dtype != xi.dtype:
            msg = (
                f"{_entry_prefix(inputs, path)}v has invalid dtype: should be {xi.dtype} but got "
                f"{vi.dtype}. Cast it to the input's dtype, e.g. v.astype(jnp.{xi.dtype})."
            )
            raise HVPError(msg)
    # A tangent must be laid out as its primal (on explicit meshes JAX requires it).
    return tangent_layout(v, primals)


def check_output_types(out: Any, fn_name: str) -> None:
    """torch's first check of ``func``'s output: an array or a tuple of them (``TypeError``)."""
    what = "outputs of the user-provided function"
    if type(out) is tuple:
        for i, el in enumerate(out):
            if not is_array(el):
                _raise_type(el, what, fn_name, where=f"index {i}")
    elif not is_array(out):
        _raise_type(out, what, fn_name, where=None)


def check_single_output(out: Any, fn_name: str) -> None:
    """torch's checks after strict mode's: a single array with one element; and a real one."""
    if type(out) is tuple:
        msg = f"The function given to {fn_name} should return a single Tensor"
        raise HVPError(msg)
    if out.size != 1:
        msg = (
            f"The Tensor returned by the function given to {fn_name} should contain a single "
            f"element, but it has shape {tuple(out.shape)}. Reduce it to one element, for "
            "example with .sum() or .mean()."
        )
        raise HVPError(msg)
    if jnp.issubdtype(out.dtype, jnp.complexfloating):
        msg = (
            f"The function given to {fn_name} returned a complex value ({out.dtype}); the "
            "Hessian is defined here for real-valued functions. Return a real scalar, for "
            "example jnp.abs(z) ** 2 or jnp.real(z)."
        )
        raise HVPError(msg)


def _entry_prefix(inputs: Inputs, path: tuple) -> str:
    if is_array(inputs.primals):
        return ""
    if inputs.is_tuple and len(path) == 1:
        return f"Entry {path[0].idx} in "
    return f"Entry {jax.tree_util.keystr(path)} in "


def _check_vector_types(v: Any, inputs: Inputs) -> None:
    """torch's ``_as_tuple(v)``: the type of every entry, before any length or size."""
    primals, fn_name = inputs.primals, inputs.fn_name
    if type(v) is tuple and (is_array(primals) or inputs.is_tuple):
        for i, entry in enumerate(v):
            # An entry may be a pytree only where the input's entry is one (jaxhvp's extension).
            pytree_entry = inputs.is_tuple and i < len(primals) and not is_array(primals[i])
            if entry is None or not (pytree_entry or is_array(entry)):
                _raise_type(entry, "v", fn_name, where=f"index {i}")
    elif (is_array(primals) or inputs.is_tuple) and not is_array(v):
        _raise_type(v, "v", fn_name, where=None)
    _check_leaf_types(v, "v", fn_name)


def _check_leaf_types(tree: Any, what: str, fn_name: str) -> None:
    """Raises for the first entry that is not an array, in order; pytrees of arrays are fine."""
    if tree is None:
        _raise_type(tree, what, fn_name, where=None)
    entries = enumerate(tree) if type(tree) is tuple else [(None, tree)]
    for i, entry in entries:
        if entry is None:  # torch's tuple rule: an entry is never None
            _raise_type(entry, what, fn_name, where=f"index {i}")
        prefix = () if i is None else (jax.tree_util.SequenceKey(i),)
        for path, leaf in jax.tree_util.tree_flatten_with_path(entry)[0]:
            if not is_array(leaf):
                path = prefix + path
                _raise_for_framework(TypeError, tree, path, leaf, what, fn_name)
                _raise_type(leaf, what, fn_name, where=_where(path) if path else None)


def _raise_for_framework(
    error: type[Exception], tree: Any, path: tuple, leaf: Any, what: str, fn_name: str
) -> None:
    """Raises ``error`` with the framework's fix when ``leaf`` is part of a framework's model."""
    msg = framework_error(tree, path, leaf, what, fn_name)
    if msg is not None:
        raise error(msg)


def _where(path: tuple) -> str:
    if len(path) == 1 and isinstance(path[0], jax.tree_util.SequenceKey):
        return f"index {path[0].idx}"
    return jax.tree_util.keystr(path)


def _raise_type(value: Any, what: str, fn_name: str, where: str | None) -> None:
    given = f"the given {what} has type" if where is None else f"the value at {where} has type"
    msg = (
        f"The {what} given to {fn_name} must be either a Tensor or a tuple of Tensors but "
        f"{given} {type(value)}. {_ACCEPTED}"
    )
    raise TypeError(msg)


def _check_float_dtype(x: jax.Array, where: str, fn_name: str, forward: bool) -> None:
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        msg = (
            f"{fn_name} does not support complex inputs, but {where} has dtype {x.dtype}. "
            "Pass the real and imaginary parts as two real arrays instead."
        )
        raise HVPError(msg)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return
    if forward:  # torch's forward-mode hessian reports it from its dual numbers
        msg = (
            f"Expected primal to be floating point or complex, but got: {x.dtype}. jaxhvp's "
            f"{fn_name} takes real floating inputs only, and {where} is not one: cast it, for "
            "example x.astype(jnp.float32)."
        )
    else:
        msg = (
            f"only Tensors of floating point dtype can require gradients, but {where} given "
            f"to {fn_name} has dtype {x.dtype}. Cast it, for example x.astype(jnp.float32)."
        )
    raise HVPError(msg)
