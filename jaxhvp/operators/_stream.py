"""Batches streamed from a host iterable (a data loader) at every product.

``batches=stream(loader)`` builds the operator of the whole dataset without stacking it in
device memory: every product reads the loader again and adds up the per-batch products, each
an eager call of the same compiled kernel as the stacked operator's (one more compilation for
a last batch of another size). Batches of unequal size are weighted exactly: a batch of
``n_b`` examples counts ``n_b / num_data`` in a mean (curvlinops' ``num_data`` and
``batch_size_fn``). With ``data_axis``, each batch is cut across the devices of that mesh axis
and each process contributes its own loader's batch (``jax.make_array_from_process_local_data``):
data parallelism with one ``psum`` per batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from .. import _eager, _sharding, _tree
from .._errors import HVPError
from .._validate import check_count
from ._base import Operator, check_stacked
from ._data import axis_names


@dataclasses.dataclass(frozen=True, eq=False)
class Stream:
    """A re-iterable source of batches, read once per product (made by :func:`stream`)."""

    iterable: Iterable
    num_data: int | None = None
    batch_size_fn: Callable | None = None


def stream(
    batches: Iterable, *, num_data: int | None = None, batch_size_fn: Callable | None = None
) -> Stream:
    """Batches read from a host iterable at every product, for any operator's ``batches``.

    Args:
      batches: a re-iterable collection of batches (a list, a data loader whose ``__iter__``
        starts over; not a generator, which can be read once). Each batch is a pytree of
        arrays (NumPy or JAX) with the examples on the leading axis, passed to the function
        as the stacked operators pass one slice. Every pass must give the same examples
        (checked by their count). A Monte Carlo Fisher's batch ``b`` draws its labels from
        ``fold_in(fold_in(key, b), j)``, ``j`` the slice of the batch (0 without
        ``data_axis``): other samples than stacked batches, of the same distribution.
      num_data: the number of examples in all the batches, if known; it is checked against
        the count the first pass finds.
      batch_size_fn: ``batch -> number of examples`` (default: the leading length of the
        batch's first leaf), the weight of the batch in a mean.

    Returns:
      A :class:`Stream` to pass as ``batches=`` to :func:`jaxhvp.hessian_operator`,
      :func:`jaxhvp.ggn_operator`, :func:`jaxhvp.fisher_operator` or
      :func:`jaxhvp.empirical_fisher_operator`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> import jaxhvp
      >>> def loss(w, batch):
      ...     x, y = batch
      ...     return jnp.mean((x @ w - y) ** 2)
      >>> x, y = np.arange(10.0).reshape(5, 2) / 10, np.ones(5)
      >>> loader = [(x[:3], y[:3]), (x[3:], y[3:])]  # 3 and 2 examples
      >>> op = jaxhvp.hessian_operator(loss, jnp.zeros(2), batches=jaxhvp.operators.stream(loader))
      >>> everything = (jnp.asarray(x), jnp.asarray(y))
      >>> full = jaxhvp.hessian_operator(lambda w: loss(w, everything), jnp.zeros(2))
      >>> bool(jnp.allclose(op @ jnp.ones(2), full @ jnp.ones(2)))
      True
    """
    if isinstance(batches, Iterator):  # not iter(batches): a data loader's starts workers
        msg = (
            "stream needs batches it can read again at every product, but got an iterator "
            f"({type(batches).__name__}), which can be read once. Pass a list, or an object "
            "whose __iter__ starts over (a data loader)."
        )
        raise TypeError(msg)
    if not isinstance(batches, Iterable) and not hasattr(type(batches), "__getitem__"):
        msg = f"stream needs an iterable of batches, but got {type(batches).__name__}."
        raise TypeError(msg)
    if num_data is not None:
        try:  # check_count's rule for counts; a TypeError here, as for the other arguments
            num_data = check_count(num_data, "num_data", "stream")
        except HVPError:
            msg = f"num_data given to stream must be a positive int, but got {num_data!r}."
            raise TypeError(msg) from None
    if batch_size_fn is not None and not callable(batch_size_fn):
        msg = f"batch_size_fn given to stream must be callable, but got {batch_size_fn!r}."
        raise TypeError(msg)
    return Stream(batches, num_data, batch_size_fn)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["value", "grad", "template"],
    meta_fields=["source", "placement", "weights", "num_data", "fn_name"],
)
@dataclasses.dataclass(frozen=True)
class StreamedOperator(Operator):
    """An operator of a dataset read from a :class:`Stream` at every product.

    Products run eagerly: ``op @ v``, ``op.matmat``, ``op.exact_diagonal()``,
    ``op.as_matrix()``, ``op.as_scipy()`` (scipy's solvers and ``eigsh`` then stream too).
    Under ``jax.jit``, in ``lax`` loops, :func:`jaxhvp.solve` and :mod:`jaxhvp.spectrum`,
    give stacked batches instead.

    Attributes:
      value: the loss over all the data (weighted by batch size in a mean), else ``None``.
      grad: its gradient, else ``None``.
      template: the operator of the first batch, whose kernels every batch reuses.
      num_data: the examples in all the batches.
    """

    value: Any
    grad: Any
    template: Operator
    source: Stream
    placement: Callable
    weights: str  # "mean": n_b / num_data; "sum": 1
    num_data: int
    fn_name: str

    @property
    def like(self) -> Any:
        return self.template.like

    @property
    def is_tuple(self) -> bool:
        return self.template.is_tuple

    @property
    def psd(self) -> bool:  # type: ignore[override]
        return self.template.psd

    def _product(self, v: Any) -> Any:
        msg = (
            "An operator that streams its batches from a host iterable computes its products "
            "itself, eagerly (op @ v, op.matmat, op.exact_diagonal(), op.as_matrix(), "
            "op.as_scipy()); they cannot be traced: not by jax.jit, a lax loop, jaxhvp.solve "
            "or jaxhvp.spectrum, nor inside a sum, a damping or a block of it (op + 0.1, "
            "op.block(...)). For those, give the batches "
            "stacked on a leading axis (placed on a mesh for data parallelism)."
        )
        raise HVPError(msg)

    def _user_function(self) -> Callable | None:
        return self.template._user_function()

    def mv(self, v: Any) -> Any:
        return self._sum(lambda op: op.mv(v), v)

    def matmat(self, vectors: Any, batch_size: int | None = None) -> Any:
        check_stacked(vectors, self.like)
        return self._sum(lambda op: op.matmat(vectors, batch_size), vectors)

    def exact_diagonal(self, batch_size: int | None = None) -> Any:
        """The exact diagonal: each batch's, weighted as in the products."""
        return self._sum(lambda op: op.exact_diagonal(batch_size), self.like)

    def as_matrix(self) -> jax.Array:
        flat, unravel = _sharding.ravel(self.like)
        units = jax.vmap(unravel)(jnp.eye(flat.size, dtype=flat.dtype))
        columns = self.matmat(units)
        return jax.vmap(lambda c: _sharding.ravel(c)[0])(columns).T

    def _flat_mv(self, x: jax.Array) -> jax.Array:
        _, unravel = _sharding.ravel(self.like)
        return _sharding.ravel(self.mv(unravel(x)))[0]

    def _sum(self, product: Callable, vectors: Any) -> Any:
        if not _eager.is_eager((vectors,)):  # traced: the loader's data would be baked in
            self._product(vectors)  # raises, saying what to do
        total, count = None, 0
        for index, stacked, size in read(self.source, self.placement, self.fn_name):
            weight = size / self.num_data if self.weights == "mean" else 1.0
            part = product(self.template._with_batches(stacked, index))
            total = _tree.scale(weight, part) if total is None else _tree.axpy(weight, part, total)
            count += size
        if count != self.num_data:
            msg = (
                f"The stream of the operator built by {self.fn_name} gave {count} examples "
                f"at this product, but {self.num_data} when the operator was built: its "
                "__iter__ must start over and give the same batches at every pass (a list, a "
                "data loader; not an object that hands back one iterator)."
            )
            raise HVPError(msg)
        return total


def streamed(
    build: Callable[[Any, int], Operator],
    source: Stream,
    weights: str,
    placement: Callable,
    fn_name: str,
) -> StreamedOperator:
    """One pass over the stream: each batch's operator (``build(stacked, index)``) gives
    its value and gradient; the first serves as the template of every product."""
    template = value = grad = None
    count = 0
    for index, stacked, size in read(source, placement, fn_name):
        op = build(stacked, index)
        template = template if template is not None else op
        weight = size if weights == "mean" else 1.0
        if op.value is not None:
            value = _add(value, weight * op.value)
            grad = (
                _tree.scale(weight, op.grad) if grad is None else _tree.axpy(weight, op.grad, grad)
            )
        count += size
    if template is None:
        msg = f"The stream given to {fn_name} yielded no batches."
        raise HVPError(msg)
    if source.num_data is not None and source.num_data != count:
        msg = (
            f"stream(num_data={source.num_data}) given to {fn_name} does not match the "
            f"{count} examples its batches hold (counted by batch_size_fn). Fix num_data or "
            "batch_size_fn."
        )
        raise HVPError(msg)
    if weights == "mean" and value is not None:
        value = value / count
        grad = _tree.scale(1 / count, grad)
    return StreamedOperator(value, grad, template, source, placement, weights, count, fn_name)


def read(source: Stream, place: Callable, fn_name: str) -> Iterator[tuple[Any, Any, int]]:
    """One pass over the stream: ``(index, placed batch, examples)`` per batch.

    Cut over a mesh in a multi-process run, every process must give a batch of the same
    shapes at each step and end together (otherwise one process's batch is added to
    another's, or a process waits forever in the ``psum``): one small all-gather per batch
    checks it, and every process raises the same error.
    """
    across = jax.process_count() > 1 and place is not stacked_one
    index = -1
    for index, batch in enumerate(source.iterable):
        if across:
            _agree(batch, index, fn_name)
        yield index, *place(batch, source.batch_size_fn, fn_name)
    if across:
        _agree(None, index + 1, fn_name)


def _agree(batch: Any, index: int, fn_name: str) -> None:
    shapes = tuple(np.shape(x) for x in jax.tree_util.tree_leaves(batch))
    mine = np.array([batch is not None, hash(shapes) & 0x7FFFFFFF], np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    if (everyone == everyone[0]).all():
        return
    ended = [int(p) for p in np.flatnonzero(everyone[:, 0] == 0)]
    what = f"process(es) {ended} had no batch {index}" if ended else "their shapes differ"
    msg = (
        f"With data_axis, every process's stream must give {fn_name} a batch of the same "
        f"shapes at every step, and as many batches; at batch {index} {what}. Give every "
        "process's loader the same number of batches and equal batch shapes (drop or pad "
        "the last one)."
    )
    raise HVPError(msg)


# --- placing one batch ------------------------------------------------------------------


def placement(data_axis: Any, params: Any, fn_name: str) -> Callable:
    """How each streamed batch is placed: a stack of one, or cut over ``data_axis``."""
    if data_axis is None:
        return stacked_one
    axes = axis_names(data_axis, fn_name)
    mesh = _sharding.mesh_of(params, axes)
    if isinstance(mesh, jax.sharding.Mesh):  # concrete: the batches are placed on it
        return split_over(mesh, axes)
    msg = (
        f"data_axis={data_axis!r} given to {fn_name} with streamed batches needs the "
        "parameters placed on a mesh with that axis, e.g. jax.device_put(params, "
        "NamedSharding(mesh, P())): the batches are cut over its devices."
    )
    raise HVPError(msg)


def stacked_one(batch: Any, batch_size_fn: Callable | None, fn_name: str) -> tuple[Any, int]:
    """The batch as a stack of one, on the default device, and its number of examples."""
    batch = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], batch)
    return batch, _size(jax.tree_util.tree_map(lambda x: x[0], batch), batch_size_fn, fn_name)


def split_over(mesh: Any, axes: tuple[str, ...]) -> Callable:
    """Placement over the mesh axes: this process's batch cut into one slice per local
    device of the axes and assembled with the other processes' into one global stack."""
    sharding = NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))
    local = math.prod(mesh.shape[a] for a in axes) // jax.process_count()

    def place(batch: Any, batch_size_fn: Callable | None, fn_name: str) -> tuple[Any, int]:
        size = _size(batch, batch_size_fn, fn_name)
        leaves = jax.tree_util.tree_leaves(batch)
        if any(np.shape(x)[0] % local for x in leaves):
            msg = (
                f"With data_axis, each batch the stream gives {fn_name} is cut into {local} "
                f"equal parts (this process's devices on the axis), but a batch has leading "
                f"lengths {[np.shape(x)[0] for x in leaves]}. Use batches whose size is a "
                f"multiple of {local} (drop or pad the last one)."
            )
            raise HVPError(msg)

        def cut(x: Any) -> jax.Array:
            x = np.asarray(x)
            return jax.make_array_from_process_local_data(
                sharding, x.reshape(local, -1, *x.shape[1:])
            )

        return jax.tree_util.tree_map(cut, batch), size * jax.process_count()

    return place


def _size(batch: Any, batch_size_fn: Callable | None, fn_name: str) -> int:
    if batch_size_fn is not None:
        return int(batch_size_fn(batch))
    lengths = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree_util.tree_leaves(batch)}
    if len(lengths) != 1 or None in lengths:
        msg = (
            f"A batch of the stream given to {fn_name} has leading lengths "
            f"{sorted(map(str, lengths))}, so its number of examples is not known: give "
            "every leaf the examples on its leading axis, or pass stream(..., "
            "batch_size_fn=lambda batch: ...)."
        )
        raise HVPError(msg)
    return int(lengths.pop())


def _add(total: Any, part: Any) -> Any:
    return part if total is None else total + part
