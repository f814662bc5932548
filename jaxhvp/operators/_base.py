"""``Operator``: the one interface of every curvature operator, and its combinations.

A subclass is a registered dataclass pytree that says three things: the vectors it acts on
(``like``, a pytree of arrays), whether its products follow the tuple rule (``is_tuple``),
and its product ``_product(v)``, written for tracing. Everything else is defined here once:
the eager product through the compiled-kernel cache (``mv``, ``op(v)``, ``op @ v``),
``matmat``, ``as_matrix``, ``as_scipy``, ``as_lineax`` with truthful tags,
``exact_diagonal``, ``block``, and the algebra ``op + other``, ``op + λ`` (damping,
``H + λI``), ``c * op``. Estimators and solvers ask for this interface, never for a
concrete class.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import _eager, _sharding, _tree
from .._errors import HVPError
from .._inputs import Inputs, as_tangents
from .._structure import difference
from .._validate import check_count


class Operator(abc.ABC):
    """A symmetric linear operator on a pytree of parameters (a curvature matrix).

    Every jaxhvp operator (Hessian, GGN, Fisher, empirical Fisher, and their damped, scaled
    and summed combinations) has this interface: ``op(v)``, ``op @ v``, ``op.mv(v)``,
    ``op.matmat(V, batch_size)``, ``op.as_matrix()``, ``op.as_scipy()``, ``op.as_lineax()``,
    ``op.exact_diagonal()``, ``op.block(select)``, ``op.value`` and ``op.grad`` (``None``
    where the operator has no objective), and ``op.psd`` (whether it is positive
    semi-definite by construction). Operators are pytrees: they cross ``jax.jit``, ride in
    ``lax`` loops, and serve as the ``A`` of ``jax.scipy.sparse.linalg.cg``. ``op + other``,
    ``op - other``, ``op + lam`` (``op + lam * I``), ``op - lam``, ``c * op``, ``op / c``
    and ``-op`` are operators too.
    """

    psd: ClassVar[bool] = False  # positive semi-definite by construction (a lineax tag)

    # Subclasses also have ``is_tuple`` (whether vectors follow the tuple rule of
    # jaxhvp.hvp), and ``value`` and ``grad`` (None where there is no objective).

    @property
    @abc.abstractmethod
    def like(self) -> Any:
        """A pytree of arrays with the structure, shapes and dtypes of the vectors."""

    @abc.abstractmethod
    def _product(self, v: Any) -> Any:
        """The product with one vector, for tracing (no checks)."""

    def _batch_product(self, v: Any, index: jax.Array) -> Any:
        """An unbiased estimate of the product from one batch, ``index`` modulo the number of
        batches (stochastic solvers such as LiSSA); the product itself for an operator
        without batches. For tracing."""
        return self._product(v)

    # --- products ------------------------------------------------------------------------

    def mv(self, v: Any) -> Any:
        """``A v``; ``v`` must match the operator's vectors (structure, shapes, dtypes)."""
        return _eager.call(_apply, (), self, (as_tangents(v, self._space()),))

    def __call__(self, v: Any) -> Any:
        return self.mv(v)

    def __matmul__(self, v: Any) -> Any:
        return self.mv(v)

    def matmat(self, vectors: Any, batch_size: int | None = None) -> Any:
        """``A v`` for vectors stacked on a leading axis of every leaf.

        Args:
          vectors: the operator's vector structure, each leaf with an extra leading axis of
            length k.
          batch_size: if given, the products are computed ``batch_size`` vectors at a time
            (``lax.map``), bounding memory; otherwise all k at once (``jax.vmap``). Where
            the stacked axis is sharded, every chunk takes the same number of vectors from
            each device's shard (``batch_size`` rounded down to a multiple of the number of
            shards, at least one vector per shard), so no vector moves between devices.

        Returns:
          The products, stacked as ``vectors`` and laid out as they are.
        """
        check_stacked(vectors, self.like)
        if batch_size is not None:
            batch_size = check_count(batch_size, "batch_size", "matmat")
        given = vectors
        vectors = _sharding.tangent_layout(vectors, self.like, stacked=True, busy=self._data_axes())
        batch_size = _sharding.chunk_size(vectors, batch_size)
        products = _eager.call(_matmat, (batch_size,), self, (vectors,))
        return _sharding.match_layout(products, given)

    def as_matrix(self) -> jax.Array:
        """The dense ``(n, n)`` matrix over the flattened vectors (``ravel_pytree`` order).

        Costs n products and n^2 memory: for small problems.
        """
        return _eager.call(_as_matrix, (), self, ())

    def exact_diagonal(self, batch_size: int | None = None) -> Any:
        """The diagonal, exactly, in the structure of the vectors: ``n`` products with the
        unit vectors (``batch_size`` at a time if given), or whatever cheaper way the
        operator knows (a GGN or Fisher from its outputs, when its batches have fewer
        outputs in all than there are parameters; not for sums, scalings, damping or blocks
        of them, which take the unit vectors). For small problems;
        :func:`jaxhvp.spectrum.diagonal` estimates."""
        diagonal = _eager.call(_unit_diagonal, (batch_size,), self, ())
        return _sharding.match_layout(diagonal, self.like)

    def exact_diagonal_cost(self) -> int:
        """The products (or vjps) :meth:`exact_diagonal` costs."""
        return _size(self.like)

    def as_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` over the flattened vectors."""
        from scipy.sparse.linalg import LinearOperator

        leaves = jax.tree_util.tree_leaves(self.like)
        n, dtype = _size(leaves), jnp.result_type(*(x.dtype for x in leaves))  # ravel's

        def matvec(x: np.ndarray) -> np.ndarray:
            return np.asarray(self._flat_mv(jnp.asarray(np.ravel(x), dtype=dtype)))

        return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=dtype)

    def _flat_mv(self, x: jax.Array) -> jax.Array:
        """``A x`` over the flattened vectors, eagerly (``as_scipy``'s product)."""
        return _eager.call(_apply_flat, (), self, (x,))

    def as_lineax(self, *, psd: bool | None = None) -> Any:
        """A ``lineax`` operator (needs ``pip install lineax``).

        Tagged symmetric, and positive semi-definite when ``op.psd`` is True (a GGN, a
        Fisher, and their non-negative combinations), so ``lineax.CG`` accepts it. Pass
        ``psd=True`` to assert it for an operator that cannot know (a Hessian at a minimum,
        a Hessian damped past its most negative eigenvalue).
        """
        try:
            import lineax
        except ImportError as error:
            msg = "as_lineax needs the optional dependency lineax: pip install lineax."
            raise ImportError(msg) from error
        tags = [lineax.symmetric_tag]
        if self.psd if psd is None else psd:
            tags.append(lineax.positive_semidefinite_tag)
        structure = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.like
        )
        return lineax.FunctionLinearOperator(_LinearMap(self), structure, tags=frozenset(tags))

    # --- algebra -------------------------------------------------------------------------

    def block(self, select: Callable) -> Operator:
        """The diagonal block ``P^T A P`` for a part of the parameters, the rest held fixed.

        ``select`` picks the part, e.g. ``lambda p: p["layer1"]`` or ``lambda p: (p["w1"],
        p["b1"])``; it may only index and regroup. The block's vectors (and ``grad``) have
        the structure it returns; a product costs one product of the whole operator.
        """
        from ._blocks import BlockOperator, pick

        positions, chosen = pick(self.like, select, "block")
        return BlockOperator(self, _eager.Static(positions), jax.tree_util.tree_structure(chosen))

    def __add__(self, other: Any) -> Operator:
        if isinstance(other, Operator):
            check_same_space(self, other)
            return SumOperator(self, other)
        if _is_scalar(other):
            psd = self.psd and _concretely_nonnegative(other)  # before it becomes an array
            return DampedOperator(self, _scalar_array(other, self), psd)
        return NotImplemented

    __radd__ = __add__

    def __sub__(self, other: Any) -> Operator:
        if isinstance(other, Operator):
            return self + (-1.0) * other
        if _is_scalar(other):
            return self + (-other)
        return NotImplemented

    def __mul__(self, scale: Any) -> Operator:
        if _is_scalar(scale):
            psd = self.psd and _concretely_nonnegative(scale)
            return ScaledOperator(self, _scalar_array(scale, self), psd)
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, scale: Any) -> Operator:
        if _is_scalar(scale):
            return self * (1 / scale)
        return NotImplemented

    def __neg__(self) -> Operator:
        return (-1.0) * self

    def _user_function(self) -> Callable | None:
        """The user's function the products run, for naming it in the eager-call warnings."""
        return None

    def _data_axes(self) -> tuple[str, ...]:
        """The mesh axes the products split the batches over (stacked vectors must not be
        split over them too)."""
        return ()

    def _space(self) -> Inputs:
        return Inputs(self.like, self.is_tuple, type(self).__name__)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return True
    return isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0


def _scalar_array(value: Any, op: Operator) -> jax.Array:
    """The number in the widest floating dtype of the vectors (products cast per leaf)."""
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(op.like))
    return jnp.asarray(value, dtype=dtype)


def _concretely_nonnegative(value: jax.Array) -> bool:
    """Whether a scalar is known (not traced) to be >= 0: only then may a tag rely on it."""
    try:
        return bool(value >= 0)
    except jax.errors.ConcretizationTypeError:
        return False


def check_same_space(a: Operator, b: Operator) -> None:
    left, right = _tree.signature(a.like), _tree.signature(b.like)
    if left != right:
        msg = (
            f"Only operators on the same vectors can be added, but the left one acts on "
            f"{left} and the right one on {right}."
        )
        raise HVPError(msg)


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["left", "right"], meta_fields=["psd"]
)
@dataclasses.dataclass(frozen=True)
class SumOperator(Operator):
    """``left + right``: a sum of two operators on the same vectors."""

    left: Operator
    right: Operator
    psd: bool | None = None  # None: both are positive semi-definite

    def __post_init__(self) -> None:
        if self.psd is None:
            object.__setattr__(self, "psd", self.left.psd and self.right.psd)

    value = grad = None  # a sum of curvatures has no one objective

    @property
    def like(self) -> Any:
        return self.left.like

    @property
    def is_tuple(self) -> bool:
        return self.left.is_tuple

    def _product(self, v: Any) -> Any:
        return jax.tree_util.tree_map(jnp.add, self.left._product(v), self.right._product(v))

    def _batch_product(self, v: Any, index: jax.Array) -> Any:
        left, right = self.left._batch_product(v, index), self.right._batch_product(v, index)
        return jax.tree_util.tree_map(jnp.add, left, right)

    def _user_function(self) -> Callable | None:
        return self.left._user_function() or self.right._user_function()

    def _data_axes(self) -> tuple[str, ...]:
        return (*self.left._data_axes(), *self.right._data_axes())


class _Modified(Operator):
    """An operator made from one ``base`` and one number: the base's vectors; positive
    semi-definite if the base is and the number is known (not traced) to be >= 0."""

    def __post_init__(self) -> None:
        if self.psd is None:
            known = self.base.psd and _concretely_nonnegative(self._number())
            object.__setattr__(self, "psd", known)

    @property
    def like(self) -> Any:
        return self.base.like

    @property
    def is_tuple(self) -> bool:
        return self.base.is_tuple

    def _user_function(self) -> Callable | None:
        return self.base._user_function()

    def _data_axes(self) -> tuple[str, ...]:
        return self.base._data_axes()


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["base", "scale"], meta_fields=["psd"]
)
@dataclasses.dataclass(frozen=True)
class ScaledOperator(_Modified):
    """``scale * base``."""

    base: Operator
    scale: jax.Array
    psd: bool | None = None

    value = grad = None  # the scaled curvature of which objective is not known

    def _number(self) -> jax.Array:
        return self.scale

    def _product(self, v: Any) -> Any:
        return self._scaled(self.base._product(v))

    def _batch_product(self, v: Any, index: jax.Array) -> Any:
        return self._scaled(self.base._batch_product(v, index))

    def _scaled(self, product: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: (self.scale * x).astype(x.dtype), product)


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["base", "damping"], meta_fields=["psd"]
)
@dataclasses.dataclass(frozen=True)
class DampedOperator(_Modified):
    """``base + damping * I`` (Levenberg-Marquardt / Tikhonov damping).

    ``value`` and ``grad`` are the base operator's: damping changes the curvature, not the
    objective.
    """

    base: Operator
    damping: jax.Array
    psd: bool | None = None

    @property
    def value(self) -> Any:
        return self.base.value

    @property
    def grad(self) -> Any:
        return self.base.grad

    def _number(self) -> jax.Array:
        return self.damping

    def _product(self, v: Any) -> Any:
        return self._damped(self.base._product(v), v)

    def _batch_product(self, v: Any, index: jax.Array) -> Any:
        return self._damped(self.base._batch_product(v, index), v)

    def _damped(self, product: Any, v: Any) -> Any:
        return jax.tree_util.tree_map(
            lambda a, x: (a + self.damping * x).astype(a.dtype), product, v
        )


@functools.partial(jax.tree_util.register_dataclass, data_fields=["op"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class _LinearMap:
    """``v -> A v`` as a pytree callable, for libraries that store the function."""

    op: Operator

    def __call__(self, v: Any) -> Any:
        return self.op._product(v)


def _apply(op: Operator, v: Any) -> Any:
    return _sharding.match_layout(op._product(v), op.like)


def _apply_flat(op: Operator, x: jax.Array) -> jax.Array:
    _, unravel = _sharding.ravel(op.like)
    return _sharding.ravel(op._product(unravel(x)))[0]


def _matmat(op: Operator, vectors: Any, batch_size: int | None) -> Any:
    return _sharding.map_in_chunks(op._product, vectors, batch_size)


def _size(tree: Any) -> int:
    return sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(tree))


def _unit_diagonal(op: Operator, batch_size: int | None) -> Any:
    return unit_diagonal(op._product, op.like, batch_size)


def unit_diagonal(matvec: Callable, like: Any, batch_size: int | None) -> Any:
    """The diagonal of ``matvec`` from its products with the unit vectors; traced."""
    flat, unravel = _sharding.ravel(like)

    def entry(i: jax.Array) -> jax.Array:
        e = jnp.zeros_like(flat).at[i].set(1)
        return _sharding.ravel(matvec(unravel(e)))[0][i]

    indices = jnp.arange(flat.size)
    if batch_size is None:
        diagonal = jax.vmap(entry)(indices)
    else:
        diagonal = lax.map(entry, indices, batch_size=batch_size)
    return _sharding.match_layout(unravel(diagonal), like)


def _as_matrix(op: Operator) -> jax.Array:
    flat, unravel = _sharding.ravel(op.like)
    columns = jax.vmap(lambda e: _sharding.ravel(op._product(unravel(e)))[0])(
        jnp.eye(flat.size, dtype=flat.dtype)
    )
    return columns.T


def check_stacked(vectors: Any, like: Any) -> None:
    """``vectors`` must be ``like``'s structure with one extra leading axis on every leaf."""
    if jax.tree_util.tree_structure(vectors) != jax.tree_util.tree_structure(like):
        msg = (
            "matmat needs the vectors stacked in the structure of the operator's vectors "
            f"(op.like), but {difference(like, vectors, 'op.like', 'vectors')}."
        )
        raise HVPError(msg)
    counts = set()
    for path, v, x in zip(
        *zip(*jax.tree_util.tree_flatten_with_path(vectors)[0]),
        jax.tree_util.tree_leaves(like),
    ):
        if jnp.shape(v)[1:] != x.shape or jnp.result_type(v) != x.dtype or jnp.ndim(v) < 1:
            msg = (
                f"matmat needs each leaf of shape (k, *input_shape) and the input's dtype; at "
                f"{jax.tree_util.keystr(path) or 'the vectors'} expected (k, "
                f"*{tuple(x.shape)}) of {x.dtype}, but got {jnp.shape(v)} of "
                f"{jnp.result_type(v)}. Stack the vectors with jnp.stack on axis 0."
            )
            raise HVPError(msg)
        counts.add(jnp.shape(v)[0])
    if len(counts) > 1:
        msg = f"matmat needs the same number of vectors in every leaf, but got {sorted(counts)}."
        raise HVPError(msg)
