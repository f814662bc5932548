"""How every operator takes data: ``batches``, one pytree stacked on a leading axis.

Without ``batches`` the function is called on the inputs alone. With ``batches`` (every
leaf of shape ``(num_batches, ...)``, e.g. ``x.reshape(num_batches, batch_size, ...)``),
batch ``b`` is passed as the last argument, ``func(params, batch_b)`` (``func(*params,
batch_b)`` for tuple inputs), and an operator's product is one ``lax.scan`` over the batches
in order: the memory of one batch, the time of ``num_batches`` products, nothing kept between
products but the parameters and the data.

Data parallelism (:class:`Split`): when the leading axis is split over mesh axes (the
batches placed with ``NamedSharding(mesh, P("data"))``, or ``data_axis="data"``), each device
scans the batches it holds and the partial sums are added by one ``psum`` per product: no
batch moves, and the communication is one all-reduce of the result's size. Inside the
caller's ``shard_map`` (or ``pmap``) over that axis, the batches are the local ones and the
same one ``psum`` runs there. This module is the one place that reduces over batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from .. import _sharding
from .._errors import HVPError
from .._inputs import is_array


def check_batches(batches: Any, fn_name: str, name: str = "batches") -> Any:
    """``batches`` (the argument ``name``) as arrays, each leaf with the same leading length
    ``num_batches >= 1``."""
    leaves = jax.tree_util.tree_flatten_with_path(batches)[0]
    if not leaves:
        msg = (
            f"{name} given to {fn_name} must hold at least one array (leaves stacked on a "
            f"leading batch axis), but got {batches!r}."
        )
        raise HVPError(msg)
    lengths = {}
    for path, leaf in leaves:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if not is_array(leaf):
            msg = (
                f"{name} given to {fn_name} must be a pytree of arrays, but {where} has type "
                f"{type(leaf)}. Wrap numbers with jnp.asarray."
            )
            raise TypeError(msg)
        if leaf.ndim < 1:
            msg = (
                f"every leaf of {name} given to {fn_name} needs a leading batch axis, "
                f"but {where} is a scalar. Stack the batches: jnp.stack([batch_0, ...])."
            )
            raise HVPError(msg)
        lengths[where] = leaf.shape[0]
    if len(set(lengths.values())) > 1 or 0 in lengths.values():
        msg = (
            f"every leaf of {name} given to {fn_name} must have the same leading length "
            f"num_batches >= 1, but got {lengths}. Stack equal-size batches on axis 0, e.g. "
            "x.reshape(num_batches, batch_size, *x.shape[1:])."
        )
        raise HVPError(msg)
    return jax.tree_util.tree_map(jnp.asarray, batches)


def first_batch(batches: Any) -> Any:
    """Batch 0's shapes and dtypes (``None`` without batches): what a function is traced on
    for its output's shapes (no indexing: a leading axis split on a mesh stays as it is)."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), batches)


def num_batches(batches: Any) -> int:
    return jax.tree_util.tree_leaves(batches)[0].shape[0]


# --- where the batches live -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Split:
    """Static: the mesh axes the batches' leading axis is split over (none: one place).

    ``mesh`` (concrete, or abstract when found while tracing) is the mesh to ``shard_map``
    over when a product is traced outside a ``shard_map`` over ``axes``; the mesh set with
    ``jax.set_mesh`` then takes precedence.
    """

    axes: tuple[str, ...] = ()
    mesh: Any = None


NOT_SPLIT = Split()


def split_of(batches: Any, data_axis: Any, fn_name: str) -> Split:
    """Where ``batches`` (checked) live: over ``data_axis`` if given, else as placed."""
    if batches is None:
        return NOT_SPLIT
    if data_axis is None:
        return _placed(batches)
    axes = axis_names(data_axis, fn_name)
    if _bound(axes):  # built inside the caller's shard_map/pmap: the batches are local
        return Split(axes)
    mesh = _mesh_with(axes, batches)
    if mesh is None:
        msg = (
            f"data_axis={data_axis!r} given to {fn_name} names no axis of a mesh in use: call "
            "it inside jax.shard_map over that axis, under `with jax.set_mesh(mesh):`, or "
            "with batches placed on the mesh (jax.device_put(batches, "
            "NamedSharding(mesh, P('data'))))."
        )
        raise HVPError(msg)
    size = math.prod(mesh.shape[a] for a in axes)
    if num_batches(batches) % size:
        msg = (
            f"The batches given to {fn_name} are split over mesh axis {data_axis!r} of size "
            f"{size}, so num_batches must be a multiple of {size}, but it is "
            f"{num_batches(batches)}. Regroup the data into a multiple of {size} batches."
        )
        raise HVPError(msg)
    return Split(axes, mesh)


def axis_names(data_axis: Any, fn_name: str) -> tuple[str, ...]:
    axes = (data_axis,) if isinstance(data_axis, str) else data_axis
    if not isinstance(axes, tuple) or not axes or not all(isinstance(a, str) for a in axes):
        msg = (
            f"data_axis given to {fn_name} must be a mesh axis name or a tuple of them, e.g. "
            f"data_axis='data', but got {data_axis!r}."
        )
        raise TypeError(msg)
    return axes


def _placed(batches: Any) -> Split:
    """The split of batches whose leaves all put their leading axis on the same mesh axes."""
    splits = set()
    for leaf in jax.tree_util.tree_leaves(batches):
        sharding = _sharding.known(leaf)
        if not isinstance(sharding, NamedSharding) or not sharding.spec:
            return NOT_SPLIT
        first = sharding.spec[0]
        if first is None:
            return NOT_SPLIT
        axes = (first,) if isinstance(first, str) else tuple(first)
        splits.add(Split(axes, sharding.mesh))
    return splits.pop() if len(splits) == 1 else NOT_SPLIT


def _mesh_with(axes: tuple[str, ...], batches: Any) -> Any:
    context = jax.sharding.get_abstract_mesh()
    if all(a in context.axis_names for a in axes):
        return context
    return _sharding.mesh_of(batches, axes)


def _bound(axes: tuple[str, ...]) -> bool:
    """Whether the axes are bound here (inside a ``shard_map``, ``pmap`` or named vmap)."""
    try:
        for axis in axes:
            lax.axis_size(axis)
    except NameError:
        return False
    return True


# --- reducing over the batches ----------------------------------------------------------


def reduce_batches(
    fn: Callable, operands: Any, batches: Any, split: Split, *, mean: bool = True
) -> Any:
    """``mean_b fn(operands, batch_b, b)`` (or the sum) over all the batches.

    ``b`` is the batch's global index. Split batches are scanned where they live and the
    partial sums added by one ``psum``; ``operands`` (the parameters, the vector) are the
    same on every device.
    """
    count = num_batches(batches)
    if not split.axes:
        total = _scan(fn, operands, _sharding.gather_leading(batches), 0)
    elif _bound(split.axes):
        count *= _axis_size(split.axes)
        total = _local_sum(fn, split.axes, operands, batches)
    else:
        total = _over_mesh(lambda o, b: _local_sum(fn, split.axes, o, b), split, operands, batches)
    if not mean:
        return total
    return jax.tree_util.tree_map(lambda t: (t / count).astype(t.dtype), total)


def one_batch(
    fn: Callable, operands: Any, batches: Any, split: Split, index: Any, *, mean: bool = True
) -> Any:
    """An unbiased estimate of :func:`reduce_batches` from batch ``index`` (modulo the
    count) alone; split batches: from one local batch per device (as many as devices)."""

    def local(operands: Any, batches: Any) -> Any:
        count = num_batches(batches)
        i = index % count
        batch = jax.tree_util.tree_map(lambda x: x[i], batches)
        if not split.axes:
            return _times(fn(operands, batch, i), 1 if mean else count)
        operands = _sharding.varying(operands, split.axes)
        offset = lax.axis_index(split.axes) * count
        estimate = lax.pmean(fn(operands, batch, offset + i), split.axes)
        return _times(estimate, 1 if mean else count * _axis_size(split.axes))

    if not split.axes:
        return local(operands, _sharding.gather_leading(batches))
    if _bound(split.axes):
        return local(operands, batches)
    return _over_mesh(local, split, operands, batches)


def _times(tree: Any, factor: int) -> Any:
    if factor == 1:
        return tree
    return jax.tree_util.tree_map(lambda x: (factor * x).astype(x.dtype), tree)


def _scan(fn: Callable, operands: Any, batches: Any, offset: Any, axes: tuple = ()) -> Any:
    shapes = jax.eval_shape(fn, operands, first_batch(batches), 0)
    # the carry varies with the batches it sums (over the split axes, or over the axes of
    # a caller's shard_map whose local batches these are)
    zeros = jax.tree_util.tree_map(_zeros, shapes)
    zeros = _sharding.varying(zeros, axes) if axes else _sharding.vary_like(zeros, batches)

    def add(total: Any, batch_and_index: tuple) -> tuple[Any, None]:
        batch, i = batch_and_index
        return jax.tree_util.tree_map(jnp.add, total, fn(operands, batch, offset + i)), None

    indices = jnp.arange(num_batches(batches))
    total, _ = lax.scan(add, zeros, (batches, indices))
    return total


def _zeros(shape: jax.ShapeDtypeStruct) -> jax.Array:
    """Zeros of ``shape``, in its sharding when an explicit mesh types it."""
    sharding = getattr(shape, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.explicit_axes:
        return jnp.zeros(shape.shape, shape.dtype, out_sharding=sharding)
    return jnp.zeros(shape.shape, shape.dtype)


def _local_sum(fn: Callable, axes: tuple[str, ...], operands: Any, batches: Any) -> Any:
    """This device's batches summed, then one ``psum`` over ``axes``.

    The operands are marked as varying over the axes first: otherwise differentiating
    through them would add a ``psum`` per batch (the transpose of the implicit broadcast).
    """
    operands = _sharding.varying(operands, axes)
    offset = lax.axis_index(axes) * num_batches(batches)
    return lax.psum(_scan(fn, operands, batches, offset, axes), axes)


def _over_mesh(local: Callable, split: Split, operands: Any, batches: Any) -> Any:
    mesh = split.mesh
    context = jax.sharding.get_abstract_mesh()
    if all(a in context.axis_names for a in split.axes):
        mesh = context
    spec = P(split.axes if len(split.axes) > 1 else split.axes[0])
    operands = _sharding.without_axes(operands, split.axes)  # P(): whole on each device
    mapped = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), spec),
        out_specs=P(),
        axis_names=frozenset(split.axes),
    )
    return mapped(operands, batches)


def _axis_size(axes: tuple[str, ...]) -> int:
    return math.prod(lax.axis_size(a) for a in axes)
