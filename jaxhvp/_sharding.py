"""Layouts across flat vectors: the one place jaxhvp reads and sets shardings.

Estimators, solvers and ``as_matrix`` see a parameter pytree as one flat vector
(``ravel_pytree`` order). Two things go wrong with sharded parameters:

* on a mesh with ``AxisType.Explicit`` axes (the default of ``jax.make_mesh`` from JAX
  0.10), the type of an array carries its sharding, and flattening a leaf sharded on an
  inner axis is a reshape JAX refuses ("This reshape is not supported"). :func:`ravel`
  makes each such leaf replicated first, and its ``unravel`` puts every leaf back in its own
  sharding. A flat vector in ``ravel_pytree`` order cannot stay sharded: a leaf split on
  an inner axis interleaves the devices' pieces in that order.
* whatever comes back from a compiled kernel is laid out as XLA chose (a bias split over a
  mesh axis, a matrix split on the wrong axis), so the caller's next jitted step would
  recompile. :func:`match_layout` puts the leaves back in the caller's shardings.

A leaf's explicit sharding is read from its type, ``jax.typeof(x).sharding``, for concrete
and traced arrays alike (JAX 0.9 and 0.10). On ``AxisType.Auto`` meshes a traced value's
sharding is not known until XLA decides it: there a traced result is tied to the caller's
leaf with ``shard_alike``, and an eager one is moved where it still differs.

Also here: :func:`map_in_chunks`, ``lax.map`` in chunks that keep a sharded stacked axis's
vectors on their devices, and :func:`varying`, the ``shard_map`` type of values that differ
per device (the data-parallel operators, ``operators/_data.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.shard_alike import shard_alike
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from ._eager._jax import ARRAY_TYPE


def explicit_sharding(x: Any) -> NamedSharding | None:
    """The sharding ``x``'s type carries on a mesh with explicit axes, else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    return sharding


def replicated(x: Any) -> Any:
    """``x`` replicated over its explicit mesh (unchanged without explicit axes)."""
    sharding = explicit_sharding(x)
    if sharding is None or all(entry is None for entry in sharding.spec):
        return x
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, PartitionSpec()))


def ravel(tree: Any) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """``jax.flatten_util.ravel_pytree`` that works on meshes with explicit axes.

    Leaves with an explicit sharding are replicated before they are flattened, so the flat
    vector is replicated; ``unravel`` gives every leaf its original sharding back. Elsewhere
    it is ``ravel_pytree`` itself.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    shardings = [explicit_sharding(x) for x in leaves]
    if not any(shardings):
        return ravel_pytree(tree)
    flat, unravel_replicated = ravel_pytree([replicated(x) for x in leaves])

    def unravel(vector: jax.Array) -> Any:
        parts = unravel_replicated(replicated(vector))
        return treedef.unflatten([_reshard(p, s) for p, s in zip(parts, shardings)])

    return flat, unravel


def match_layout(tree: Any, like: Any, *, stacked: bool = False) -> Any:
    """Each leaf of ``tree`` in the sharding of the corresponding leaf of ``like``.

    For results. Concrete arrays are moved (``jax.device_put``) only where the shardings
    differ; traced values are resharded where ``like``'s leaf carries an explicit sharding,
    and elsewhere (an Auto mesh, whose layouts XLA decides when it compiles) tied to the
    leaf of ``like`` with ``shard_alike``, so that XLA gives both the same layout: the
    caller's, for a ``like`` the caller passed in. With ``stacked``, ``tree``'s leaves have
    one more leading axis than ``like``'s (vectors stacked on axis 0), left unsharded
    (traced ones on an Auto mesh are left to XLA: ``shard_alike`` needs equal shapes, and
    one tied to a broadcast of ``like`` still leaves XLA free where ``like`` is replicated).
    """
    return _map_layout(tree, like, stacked, None, explicit_only=False)


def tangent_layout(
    tree: Any, like: Any, *, stacked: bool = False, busy: tuple[str, ...] = ()
) -> Any:
    """Tangents ``tree`` for the primals ``like``: on explicit meshes JAX requires each to
    have its primal's sharding, so there they are resharded (elsewhere left as they are).

    With ``stacked`` (tangents stacked on a new leading axis), that axis keeps its sharding
    if every leaf has the same one (``vmap`` needs that) and neither a primal nor the
    product (``busy``: the axes an operator splits its batches over) uses its mesh axes.
    """
    lead = _shared_lead(tree, like, busy) if stacked else None
    return _map_layout(tree, like, stacked, lead, explicit_only=True)


def _map_layout(tree: Any, like: Any, stacked: bool, lead: Any, explicit_only: bool) -> Any:
    if all(map(_unplaced, jax.tree_util.tree_leaves(like))):
        return tree  # nothing on a mesh (the common eager call): nothing to read or move

    def put(x: Any, ref: Any) -> Any:
        if _unplaced(ref):  # moving x to ref's one device could split an operator's leaves
            return x
        explicit = explicit_sharding(ref)
        if explicit_only and explicit is None:
            return x
        if _is_concrete(x) and _is_concrete(ref):
            target = _stacked(ref.sharding, lead) if stacked else ref.sharding
            if target is None or x.sharding.is_equivalent_to(target, x.ndim):
                return x
            return jax.device_put(x, target)
        if explicit is not None:
            return _reshard(x, _stacked(explicit, lead) if stacked else explicit)
        if explicit_only or stacked or not _is_traced(x, ref):
            return x
        return shard_alike(x, ref)[0]  # an Auto mesh: XLA lays x out as it lays ref out

    return jax.tree_util.tree_map(put, tree, like)


def _stacked(sharding: Any, lead: Any) -> Any:
    """The sharding of vectors laid out by ``sharding`` and stacked on a new leading axis
    sharded by ``lead`` (a ``PartitionSpec`` entry); None where there is no such sharding."""
    if isinstance(sharding, NamedSharding):
        spec = PartitionSpec(lead, *sharding.spec)
        return NamedSharding(sharding.mesh, spec, memory_kind=sharding.memory_kind)
    return sharding if sharding.is_fully_replicated else None


def _shared_lead(tree: Any, like: Any, busy: tuple[str, ...]) -> Any:
    """The ``PartitionSpec`` entry of the stacked axis the tangents ``tree`` can keep."""
    leads, used, meshes = set(), set(busy), set()
    for x, ref in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(like)):
        current, target = known(x), known(ref)
        if not isinstance(current, NamedSharding):
            return None
        leads.add(_axes(current.spec[0] if len(current.spec) else None))
        meshes.add(current.mesh.shape_tuple)
        if isinstance(target, NamedSharding):
            used.update(*map(_axes, target.spec))
            meshes.add(target.mesh.shape_tuple)
    if len(leads) != 1 or len(meshes) != 1:
        return None
    (lead,) = leads
    if not lead or set(lead) & used:
        return None
    return lead[0] if len(lead) == 1 else lead


def _axes(entry: Any) -> tuple[str, ...]:
    """The mesh axes one entry of a ``PartitionSpec`` names, in order."""
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def known(x: Any) -> Any:
    """``x``'s sharding where it is known: a concrete array's, or an explicit one."""
    return x.sharding if _is_concrete(x) else explicit_sharding(x)


def _reshard(x: Any, sharding: NamedSharding | None) -> Any:
    if sharding is None or explicit_sharding(x) == sharding:
        return x
    return jax.sharding.reshard(x, sharding)


def mesh_of(tree: Any, axes: tuple[str, ...]) -> Any:
    """The mesh of the first leaf of ``tree`` known to be on a mesh with ``axes`` (a
    concrete array's, or an explicit type's), else None."""
    for leaf in jax.tree_util.tree_leaves(tree):
        sharding = known(leaf)
        if isinstance(sharding, NamedSharding) and set(axes) <= set(sharding.mesh.axis_names):
            return sharding.mesh
    return None


def replicated_like(x: jax.Array, like: Any) -> jax.Array:
    """``x`` replicated over the mesh of ``like``'s first leaf that has one (a state scalar
    laid out as a step on ``like`` returns it); unchanged where no leaf has a mesh."""
    for ref in jax.tree_util.tree_leaves(like):
        if _is_concrete(ref) and isinstance(ref.sharding, NamedSharding):
            return jax.device_put(x, NamedSharding(ref.sharding.mesh, PartitionSpec()))
        sharding = explicit_sharding(ref)
        if sharding is not None:
            return _reshard(x, NamedSharding(sharding.mesh, PartitionSpec()))
    return x


# --- chunks of stacked vectors -----------------------------------------------------------


def chunk_size(xs: Any, batch_size: int | None) -> int | None:
    """``batch_size`` for vectors ``xs`` stacked on axis 0: where that axis is sharded (a
    known sharding: concrete, or explicit), rounded down to a multiple of its number of
    shards that divides its length, at least one vector per shard; else as given."""
    if batch_size is None:
        return None
    leaves = jax.tree_util.tree_leaves(xs)
    shards = math.lcm(*(_leading_shards(x) for x in leaves))
    length = leaves[0].shape[0]
    if shards == 1 or length % shards:
        return batch_size
    per_shard = length // shards
    chunks = next(c for c in range(max(batch_size // shards, 1), 0, -1) if per_shard % c == 0)
    return chunks * shards


def _leading_shards(x: Any) -> int:
    sharding = known(x)
    if not isinstance(sharding, NamedSharding) or not sharding.spec:
        return 1
    return math.prod(sharding.mesh.shape[a] for a in _axes(sharding.spec[0]))


def map_in_chunks(fn: Callable, xs: Any, batch_size: int | None) -> Any:
    """``fn`` over axis 0 of ``xs``: all at once (``vmap``), or ``batch_size`` at a time.

    ``lax.map(fn, xs, batch_size=b)`` takes consecutive rows as a chunk: where axis 0 is
    sharded over devices, a chunk lies in one device's shard and is gathered to all of them.
    Here chunk ``j`` takes rows ``j, j + k/b, j + 2 k/b, ...`` (axis 0 seen as ``(b, k/b)``,
    mapped over its second axis), so every chunk takes ``b / shards`` rows from each
    device's shard and nothing moves; the results come back in order. ``b`` is first
    rounded by :func:`chunk_size`.
    """
    length = jax.tree_util.tree_leaves(xs)[0].shape[0]
    size = chunk_size(xs, batch_size)
    if size is None or size >= length:
        return jax.vmap(fn)(xs)
    if length % size:
        return lax.map(fn, xs, batch_size=size)
    steps = length // size

    def split(x: jax.Array) -> jax.Array:
        return jnp.swapaxes(x.reshape(size, steps, *x.shape[1:]), 0, 1)

    def join(y: jax.Array) -> jax.Array:
        return jnp.swapaxes(y, 0, 1).reshape(length, *y.shape[2:])

    out = lax.map(jax.vmap(fn), jax.tree_util.tree_map(split, xs))
    return jax.tree_util.tree_map(join, out)


def without_axes(tree: Any, axes: tuple[str, ...]) -> Any:
    """Leaves with an explicit sharding over any of ``axes`` resharded to drop those axes
    (replicated over them), as a ``shard_map`` over ``axes`` with ``P()`` needs."""

    def drop(x: Any) -> Any:
        sharding = explicit_sharding(x)
        if sharding is None or not set(axes) & {a for e in sharding.spec for a in _axes(e)}:
            return x
        spec = [tuple(a for a in _axes(e) if a not in axes) or None for e in sharding.spec]
        spec = [e[0] if isinstance(e, tuple) and len(e) == 1 else e for e in spec]
        return _reshard(x, NamedSharding(sharding.mesh, PartitionSpec(*spec)))

    return jax.tree_util.tree_map(drop, tree)


def regroup(x: Any, groups: int) -> Any:
    """``x``'s leading axis as ``(groups, length // groups)``. Where an explicit mesh splits
    it over more shards than divide ``groups``, it is gathered first (JAX refuses the
    reshape); elsewhere the split stays on the groups."""
    if explicit_sharding(x) is not None and groups % _leading_shards(x):
        x = gather_leading(x)
    return x.reshape(groups, x.shape[0] // groups, *x.shape[1:])


def gather_leading(tree: Any) -> Any:
    """Leaves whose leading axis an explicit mesh splits, resharded to keep it whole: a
    ``lax.scan`` (or an index) over that axis needs it (explicit meshes refuse otherwise)."""

    def whole(x: Any) -> Any:
        sharding = explicit_sharding(x)
        if sharding is None or not sharding.spec or sharding.spec[0] is None:
            return x
        spec = PartitionSpec(None, *sharding.spec[1:])
        return _reshard(x, NamedSharding(sharding.mesh, spec))

    return jax.tree_util.tree_map(whole, tree)


# --- shard_map axes ----------------------------------------------------------------------


def manual(axes: tuple[str, ...]) -> bool:
    """Whether ``axes`` are the manual axes of an enclosing ``shard_map`` (where values
    carry the axes they vary over)."""
    return bool(axes) and all(a in jax.sharding.get_abstract_mesh().manual_axes for a in axes)


def varying(tree: Any, axes: tuple[str, ...]) -> Any:
    """``tree`` marked as varying over ``axes`` inside a ``shard_map`` (unchanged
    elsewhere): leaves that do not vary over them yet go through ``lax.pcast``."""
    if not manual(axes):
        return tree

    def cast(x: Any) -> Any:
        missing = tuple(a for a in axes if a not in _varying_axes(x))
        return lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree_util.tree_map(cast, tree)


def vary_like(tree: Any, others: Any) -> Any:
    """``tree`` marked as varying over every ``shard_map`` axis a leaf of ``others`` varies
    over (a sum's zeros, before it adds values computed from ``others``)."""
    axes = set()
    for x in jax.tree_util.tree_leaves(others):
        axes |= _varying_axes(x)
    return varying(tree, tuple(sorted(axes)))


def _varying_axes(x: Any) -> frozenset:
    aval = jax.typeof(x)
    if hasattr(aval, "manual_axis_type"):  # JAX >= 0.10
        return aval.manual_axis_type.varying
    return getattr(aval, "vma", frozenset())  # JAX 0.9


def _unplaced(ref: Any) -> bool:
    """A concrete array not placed on a mesh: it asks no layout of anything. (By exact
    type: on every eager call's path, and ``isinstance(x, jax.Array)`` costs more.)"""
    return type(ref) is ARRAY_TYPE and not isinstance(ref.sharding, NamedSharding)


def _is_concrete(x: Any) -> bool:
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


def _is_traced(*values: Any) -> bool:
    return all(isinstance(x, jax.core.Tracer) for x in values)
