"""Curvature in output space: the generalized Gauss-Newton, the Fisher (exact and Monte
Carlo) and the empirical Fisher, all ``J^T C J`` with ``J`` the Jacobian of the model.

A product is a ``jax.linearize`` of the model (one forward pass, the tangent ``J v``), the
output-space product ``C (J v)``, and the transpose of the linearization (the vjp): ``J`` is
never materialised. The four matrices differ only in ``C``:

* GGN: the Hessian of the user's ``loss`` in the outputs (forward-over-reverse there);
* Fisher: the closed-form Fisher of a likelihood (:mod:`._likelihoods`);
* Monte Carlo Fisher: ``mean_s g_s g_s^T`` per row, ``g_s`` the loss gradient at labels
  sampled from the model (fixed by the key: the operator is one fixed matrix);
* empirical Fisher: ``r_n r_n^T`` per example, ``r_n`` the gradient of example ``n``'s loss
  in its outputs; so ``J^T C J = sum_n g_n g_n^T`` with ``g_n`` the per-example gradients.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .. import _eager, _sharding
from .._errors import HVPError
from .._inputs import as_inputs, as_primals_and_tangents
from .._modes import check_callable
from .._validate import check_choice, check_count, check_key
from . import _output_diagonal
from ._base import Operator
from ._data import (
    NOT_SPLIT,
    Split,
    check_batches,
    first_batch,
    num_batches,
    one_batch,
    reduce_batches,
    split_of,
)
from ._likelihoods import Likelihood, as_likelihood, check_output
from ._stream import Stream, placement, streamed

REDUCTIONS = ("mean", "sum")


# --- the model and the output-space matrices (static, hashable parts of an operator) ------


@dataclasses.dataclass(frozen=True)
class Model:
    """``func`` called on the params (the tuple rule) and, with batches, the batch."""

    func: Callable
    splat: bool
    batched: bool

    def __call__(self, params: Any, batch: Any) -> Any:
        args = tuple(params) if self.splat else (params,)
        return self.func(*args, batch) if self.batched else self.func(*args)


@dataclasses.dataclass(frozen=True)
class LossHessian:
    """GGN: ``C`` is the Hessian of ``loss`` in the outputs; the mean over batches."""

    loss: Callable
    batched: bool
    fn_name: str
    convex: bool = True  # whether the loss is convex in the outputs: then G is PSD
    combine = "mean"

    def value(self, f: Any, batch: Any) -> jax.Array:
        out = self.loss(f, batch) if self.batched else self.loss(f)
        return _scalar(out, "loss", self.fn_name)

    def apply(self, f: Any, batch: Any, key: Any, u: Any) -> Any:
        return jax.jvp(jax.grad(lambda out: self.value(out, batch)), (f,), (u,))[1]


@dataclasses.dataclass(frozen=True)
class Fisher:
    """Exact (``samples`` None) or Monte Carlo Fisher of a likelihood."""

    likelihood: Likelihood
    reduction: str
    samples: int | None
    fn_name: str

    @property
    def combine(self) -> str:
        return self.reduction

    value = None  # the Fisher needs no labels: there is no loss to report

    def _scale(self, f: jax.Array) -> float:
        return 1 / self.likelihood.terms(f) if self.reduction == "mean" else 1.0

    def apply(self, f: Any, batch: Any, key: Any, u: Any) -> Any:
        check_output(f, self.likelihood, self.fn_name)
        if self.samples is None:
            return self._scale(f) * self.likelihood.fisher(f, u)
        grads = self.likelihood.sampled_gradients(key, f, self.samples)
        rows = jax.vmap(self.likelihood.rows)(grads)  # (samples, rows, event)
        # Sums of products, not einsum: explicit meshes refuse contractions over a sharded
        # event axis (ShardingTypeError), and these are small.
        inner = jnp.sum(rows * self.likelihood.rows(u), axis=-1)  # (samples, rows)
        out = jnp.sum(inner[..., None] * rows, axis=0) / self.samples
        return (self._scale(f) * out).reshape(f.shape)


@dataclasses.dataclass(frozen=True)
class EmpiricalFisher:
    """``sum_n r_n r_n^T`` per example, from ``loss`` giving one loss per example."""

    loss: Callable
    batched: bool
    reduction: str
    fn_name: str

    @property
    def combine(self) -> str:
        return self.reduction

    def per_example(self, f: Any, batch: Any) -> jax.Array:
        out = self.loss(f, batch) if self.batched else self.loss(f)
        count = _examples(f, self.fn_name)
        if not isinstance(out, jax.Array) or out.shape != (count,):
            given = f"shape {out.shape}" if isinstance(out, jax.Array) else type(out).__name__
            msg = (
                f"The loss given to {self.fn_name} must return one loss per example, shape "
                f"({count},) for outputs with {count} examples on their leading axis, but it "
                f"returned {given}. Return the unreduced losses, e.g. "
                "optax.softmax_cross_entropy_with_integer_labels(logits, labels)."
            )
            raise HVPError(msg)
        return out

    def value(self, f: Any, batch: Any) -> jax.Array:
        losses = self.per_example(f, batch)
        return losses.mean() if self.reduction == "mean" else losses.sum()

    def apply(self, f: Any, batch: Any, key: Any, u: Any) -> Any:
        r = jax.grad(lambda out: self.per_example(out, batch).sum())(f)
        inner = sum(
            jnp.sum((a * b).reshape(a.shape[0], -1), axis=1)
            for a, b in zip(jax.tree_util.tree_leaves(r), jax.tree_util.tree_leaves(u))
        )
        scale = 1 / inner.shape[0] if self.reduction == "mean" else 1.0
        return jax.tree_util.tree_map(
            lambda a: scale * a * inner.reshape((-1,) + (1,) * (a.ndim - 1)), r
        )


def _examples(f: Any, fn_name: str) -> int:
    counts = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree_util.tree_leaves(f)}
    if len(counts) != 1 or None in counts:
        msg = (
            f"The func given to {fn_name} must return outputs with the examples on the leading "
            f"axis of every array, but their leading lengths are {sorted(map(str, counts))}."
        )
        raise HVPError(msg)
    return counts.pop()


def _scalar(out: Any, name: str, fn_name: str) -> jax.Array:
    if not isinstance(out, jax.Array) or out.size != 1:
        given = f"shape {out.shape}" if isinstance(out, jax.Array) else type(out).__name__
        msg = (
            f"The {name} given to {fn_name} must return a single value (a one-element "
            f"floating array), but it returned {given}; reduce it, e.g. with .mean()."
        )
        raise HVPError(msg)
    if not jnp.issubdtype(out.dtype, jnp.floating):
        msg = f"The {name} given to {fn_name} must return a floating value, not {out.dtype}."
        raise HVPError(msg)
    return out.reshape(())


# --- the product ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GGNProduct:
    """``(params, batches, key, v) -> J^T C J v``, combined over the batches."""

    model: Model
    curvature: Any  # LossHessian, Fisher or EmpiricalFisher
    split: Split = NOT_SPLIT  # where the batches live

    def one_batch(self, params: Any, batch: Any, key: Any, v: Any) -> Any:
        f, jvp = jax.linearize(lambda p: self.model(p, batch), params)
        cu = self.curvature.apply(f, batch, key, jvp(v))
        cu = jax.tree_util.tree_map(lambda c, y: c.astype(y.dtype), cu, f)
        return jax.linear_transpose(jvp, params)(cu)[0]

    def over_batches(self, fn: Callable, operands: Any, batches: Any, key: Any) -> Any:
        """``fn(operands, batch, key_b)`` combined over the batches (batch ``b``'s key
        folded from ``key`` by ``b``)."""
        if batches is None:
            return fn(operands, None, key)

        def on_batch(operands_and_key: tuple, batch: Any, index: Any) -> Any:
            operands, key = operands_and_key
            return fn(operands, batch, _fold(key, index))

        mean = self.curvature.combine == "mean"
        return reduce_batches(on_batch, (operands, key), batches, self.split, mean=mean)

    def __call__(self, params: Any, batches: Any, key: Any, v: Any) -> Any:
        return self.over_batches(self._on_batch, (params, v), batches, key)

    def _on_batch(self, params_and_v: tuple, batch: Any, key: Any) -> Any:
        params, v = params_and_v
        return self.one_batch(params, batch, key, v)

    def sampled(self, params: Any, batches: Any, key: Any, v: Any, index: jax.Array) -> Any:
        """The product estimated from batch ``index % num_batches`` alone (unbiased: times
        the number of batches when batches are summed)."""
        if batches is None:
            return self(params, batches, key, v)

        def on_batch(operands: tuple, batch: Any, index: Any) -> Any:
            params, v, key = operands
            return self.one_batch(params, batch, _fold(key, index), v)

        mean = self.curvature.combine == "mean"
        return one_batch(on_batch, (params, v, key), batches, self.split, index, mean=mean)

    def value_and_grad(self, params: Any, batches: Any) -> tuple[jax.Array, Any]:
        def one(params: Any, batch: Any, _: Any) -> tuple:
            return jax.value_and_grad(lambda p: self.curvature.value(self.model(p, batch), batch))(
                params
            )

        # without batches: no scan, so nothing is traced ahead (jit=False runs op by op)
        return self.over_batches(one, params, batches, None)

    def diagonal(self, params: Any, batches: Any, key: Any) -> Any:
        """The exact diagonal from the output space (:mod:`._output_diagonal`): example by
        example when the batch can be cut into examples, else over the whole batch."""

        def one(params: Any, batch: Any, k: Any) -> Any:
            f_shape = jax.eval_shape(lambda: self.model(params, batch))
            how = _output_diagonal.full_batch
            if batch is not None and _output_diagonal.examples_of(f_shape, batch):
                how = _output_diagonal.per_example
            return how(self.model, self.curvature.apply, params, batch, k)

        return self.over_batches(one, params, batches, key)

    def output_size(self, params: Any, batches: Any) -> int:
        """The number of outputs of one batch: the vjps an exact diagonal costs per batch."""
        shape = jax.eval_shape(self.model, params, first_batch(batches))
        return sum(x.size for x in jax.tree_util.tree_leaves(shape))


def _fold(key: Any, index: Any) -> Any:
    return None if key is None else jax.random.fold_in(key, index)


# --- the operator -----------------------------------------------------------------------


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["value", "grad", "params", "batches", "key"],
    meta_fields=["product", "kind", "is_tuple", "psd"],
)
@dataclasses.dataclass(frozen=True)
class GGNOperator(Operator):
    """A curvature ``J^T C J`` of a model's outputs: GGN, Fisher or empirical Fisher.

    Built by :func:`ggn_operator`, :func:`fisher_operator` or
    :func:`empirical_fisher_operator` (``kind`` says which). A pytree with the interface of
    :class:`jaxhvp.operators.Operator`; every product re-runs the model's forward pass on
    each batch (nothing but the parameters and the data is kept).

    Attributes:
      value: the loss (mean or sum as the operator is normalised); ``None`` for the Fisher.
      grad: its gradient, with the structure of the inputs; ``None`` for the Fisher.
      params: the point the curvature is taken at.
      batches: the stacked data, or ``None``.
      key: the PRNG key of a Monte Carlo Fisher, else ``None``.
      kind: ``"ggn"``, ``"fisher"``, ``"fisher_mc"`` or ``"empirical_fisher"``.
    """

    value: Any
    grad: Any
    params: Any
    batches: Any
    key: Any
    product: GGNProduct
    kind: str
    is_tuple: bool
    psd: bool

    @property
    def like(self) -> Any:
        return self.params

    def _product(self, v: Any) -> Any:
        return self.product(self.params, self.batches, self.key, v)

    def _batch_product(self, v: Any, index: jax.Array) -> Any:
        return self.product.sampled(self.params, self.batches, self.key, v, index)

    def _user_function(self) -> Callable | None:
        return self.product.model.func

    def _data_axes(self) -> tuple[str, ...]:
        return self.product.split.axes

    def _with_batches(self, batches: Any, index: int) -> GGNOperator:
        """The same operator over other batches of the same structure (a stream's; batch
        ``index`` draws its Monte Carlo labels from the key folded by ``index``)."""
        return dataclasses.replace(self, batches=batches, key=_fold(self.key, index))

    def exact_diagonal(self, batch_size: int | None = None) -> Any:
        """The exact diagonal; in output space when that is cheaper: ``C`` of each batch
        formed densely from its outputs and eigendecomposed, ``C = Q diag(lam) Q^T``, and
        ``diag(J^T C J) = sum_k lam_k (J^T q_k)**2``, one vjp per output (no probes)."""
        if self._outputs() >= super().exact_diagonal_cost():
            return super().exact_diagonal(batch_size)
        return _sharding.match_layout(_eager.call(_diagonal, (), self, ()), self.like)

    def exact_diagonal_cost(self) -> int:
        return min(self._outputs(), super().exact_diagonal_cost())

    def _outputs(self) -> int | float:
        """The vjps an output-space diagonal costs: the outputs of all the batches (infinite
        if the model cannot be traced ahead, as a model that needs concrete values)."""
        batches = 1 if self.batches is None else num_batches(self.batches)
        try:
            return batches * self.product.output_size(self.params, self.batches)
        except jax.errors.ConcretizationTypeError:
            return math.inf


def _diagonal(op: GGNOperator) -> Any:
    return _sharding.match_layout(op.product.diagonal(op.params, op.batches, op.key), op.like)


def _build(
    funcs: tuple,
    inputs: Any,
    batches: Any,
    key: Any,
    curvature: Any,
    kind: str,
    jit: bool,
    data_axis: Any = None,
) -> GGNOperator:
    fn_name = curvature.fn_name
    for func in funcs:
        check_callable(func, fn_name)
    spec = as_inputs(inputs, fn_name)
    if isinstance(batches, Stream):
        place = placement(data_axis, spec.primals, fn_name)

        def build(stacked: Any, _: int) -> GGNOperator:
            return _build(funcs, inputs, stacked, key, curvature, kind, jit)

        return streamed(build, batches, curvature.combine, place, fn_name)
    if batches is not None:
        batches = check_batches(batches, fn_name)
    elif data_axis is not None:
        msg = f"{fn_name} takes data_axis only with batches: it says where the batches live."
        raise HVPError(msg)
    split = split_of(batches, data_axis, fn_name)
    product = _product(funcs, curvature, spec.is_tuple, batches is not None, split)
    value = grad = None
    if curvature.value is not None:
        # The kernel's key holds the curvature without the user's functions: those are
        # walked (by code and the arrays they read), so a fresh closure reuses the kernel.
        template = (_without_loss(curvature), spec.is_tuple, batches is not None, split)
        value, grad = _eager.call(
            _value_and_grad, template, funcs, (spec.primals, batches), jit=jit
        )
        grad = _sharding.match_layout(grad, spec.primals)
    psd = getattr(curvature, "convex", True)
    return GGNOperator(value, grad, spec.primals, batches, key, product, kind, spec.is_tuple, psd)


def _product(funcs: tuple, curvature: Any, splat: bool, batched: bool, split: Split) -> GGNProduct:
    if hasattr(curvature, "loss"):
        curvature = dataclasses.replace(curvature, loss=funcs[1])
    return GGNProduct(Model(funcs[0], splat, batched), curvature, split)


def _without_loss(curvature: Any) -> Any:
    return dataclasses.replace(curvature, loss=None) if hasattr(curvature, "loss") else curvature


def _value_and_grad(
    funcs: tuple,
    params: Any,
    batches: Any,
    curvature: Any,
    splat: bool,
    batched: bool,
    split: Split,
) -> Any:
    return _product(funcs, curvature, splat, batched, split).value_and_grad(params, batches)


def _check_reduction(reduction: Any, fn_name: str) -> str:
    return check_choice(reduction, "reduction", REDUCTIONS, fn_name)


def ggn_operator(
    func: Callable,
    loss: Callable,
    inputs: Any,
    *,
    batches: Any = None,
    data_axis: Any = None,
    loss_is_convex: bool = True,
    jit: bool = True,
) -> GGNOperator:
    """The generalized Gauss-Newton matrix ``G = J^T H_L J`` of ``loss(func(inputs))``.

    ``J`` is the Jacobian of ``func`` (outputs any pytree) and ``H_L`` the Hessian of
    ``loss`` in those outputs. ``G`` drops the second derivatives of ``func`` from the
    Hessian of the composition: it equals the Hessian when ``func`` is linear, and it is
    positive semi-definite whenever ``loss`` is convex in the outputs (squared error,
    cross-entropy on logits), which the operator's ``psd`` tag assumes unless
    ``loss_is_convex=False``. A product is one forward pass with a tangent (``J v``), a
    Hessian product of ``loss`` in output space, and one vjp; ``J`` is never formed.

    Args:
      func: the model; ``func(inputs)`` (``func(*inputs)`` for a tuple), or with
        ``batches`` ``func(inputs, batch)``; returns any pytree of floating arrays.
      loss: ``loss(outputs)``, or with ``batches`` ``loss(outputs, batch)``: one value.
      inputs: the parameters, as in :func:`jaxhvp.hvp` (an array, a tuple, any pytree).
      batches: optionally, data stacked on a leading axis (``func``'s and ``loss``'s
        ``batch`` is one slice): ``G`` and ``value`` are then the means over the batches,
        computed by one ``lax.scan`` per product with the memory of one batch.
      data_axis: the mesh axis the batches are split over, as in
        :func:`jaxhvp.hessian_operator` (data parallelism: one ``psum`` per product).
      loss_is_convex: whether ``loss`` is convex in the outputs, so that ``G`` is positive
        semi-definite (``op.psd``, and the lineax tag of ``op.as_lineax()``).
      jit: as in :func:`jaxhvp.hvp`, for ``value`` and ``grad``.

    Returns:
      A :class:`GGNOperator` (``kind="ggn"``) with ``value`` the loss and ``grad`` its
      gradient (the mean over the batches).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> x = jnp.array([[1.0, 2.0], [3.0, 1.0], [0.0, 1.0]])
      >>> def model(w):
      ...     return jnp.tanh(x @ w)
      >>> def loss(out):
      ...     return 0.5 * jnp.sum(out**2)
      >>> op = jaxhvp.ggn_operator(model, loss, jnp.array([0.5, -0.5]))
      >>> op.as_matrix().round(2)  # J^T J: the loss's Hessian is the identity
      Array([[2.21, 1.77],
             [1.77, 3.27]], dtype=float32)
    """
    curvature = LossHessian(loss, batches is not None, "ggn_operator", bool(loss_is_convex))
    return _build((func, loss), inputs, batches, None, curvature, "ggn", jit, data_axis)


def fisher_operator(
    func: Callable,
    inputs: Any,
    *,
    likelihood: str,
    batches: Any = None,
    data_axis: Any = None,
    reduction: str = "mean",
    mc_samples: int | None = None,
    key: Any = None,
    jit: bool = True,
) -> GGNOperator:
    """The Fisher information of a model's predictive distribution, exact or Monte Carlo.

    ``F = c sum_n J_n^T E_{y ~ p(.|f_n)}[grad_f l(f_n, y) grad_f l(f_n, y)^T] J_n``: the
    expected outer product of the gradients of the negative log-likelihood ``l``, with the
    labels drawn from the model itself (no data labels are used). Exact (the default), it is
    computed in closed form in output space and equals the GGN of the matching loss (and
    its expected Hessian); with ``mc_samples``, the expectation is replaced by the mean
    over ``mc_samples`` labels drawn with ``key`` (curvlinops' ``FisherMCLinearOperator``,
    kfac-jax's sampled Fisher): a fixed matrix, the same samples for every product.

    ``likelihood`` and the loss it matches (``c`` for ``reduction="mean"``):

    * ``"categorical"``: softmax cross-entropy on logits with the classes on the last axis,
      ``optax.softmax_cross_entropy_with_integer_labels(f, y).mean()``; ``c`` = 1 / (the
      number of positions, all axes but the last);
    * ``"gaussian"``: ``jnp.mean((f - y) ** 2)`` (a Gaussian of variance 1/2); ``c`` = 1 /
      (the number of elements of ``f``);
    * ``"bernoulli"``: sigmoid cross-entropy on logits, per element,
      ``optax.sigmoid_binary_cross_entropy(f, y).mean()``; ``c`` = 1 / (the number of
      elements).

    ``reduction="sum"`` makes ``c = 1`` (the loss summed). With ``batches``, the mean
    reduction averages the per-batch means (the mean over all examples for equal batches)
    and the sum reduction adds the per-batch sums.

    Args:
      func: the model, returning one floating array (logits, or means for
        ``"gaussian"``); called as in :func:`ggn_operator`.
      inputs: the parameters, as in :func:`jaxhvp.hvp`.
      likelihood: ``"categorical"``, ``"gaussian"`` or ``"bernoulli"``.
      batches: optionally, data stacked on a leading axis, as in :func:`ggn_operator`.
      data_axis: as in :func:`ggn_operator`.
      reduction: ``"mean"`` (default) or ``"sum"``, as above.
      mc_samples: None (exact) or the number of sampled labels per output row.
      key: the PRNG key for the samples (only with ``mc_samples``); batch ``b`` uses
        ``jax.random.fold_in(key, b)`` (a streamed batch ``b``: ``fold_in(fold_in(key, b),
        j)`` for its slice ``j``, see :func:`jaxhvp.operators.stream`).
      jit: as in :func:`jaxhvp.hvp`.

    Returns:
      A :class:`GGNOperator`, ``kind`` ``"fisher"`` or ``"fisher_mc"``, with ``value`` and
      ``grad`` ``None`` (the Fisher does not use the labels).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> def logits(w):
      ...     return x @ w  # w: (2 features, 3 classes)
      >>> op = jaxhvp.fisher_operator(logits, jnp.zeros((2, 3)), likelihood="categorical")
      >>> (op @ jnp.ones((2, 3))).round(4)  # the softmax Fisher kills constant shifts
      Array([[0., 0., 0.],
             [0., 0., 0.]], dtype=float32)
    """
    fn_name = "fisher_operator"
    like = as_likelihood(likelihood, fn_name)
    reduction = _check_reduction(reduction, fn_name)
    if mc_samples is None:
        if key is not None:
            msg = (
                f"key given to {fn_name} draws Monte Carlo labels, which needs mc_samples "
                "(e.g. mc_samples=1); without it the Fisher is exact and takes no key."
            )
            raise HVPError(msg)
        curvature, kind = Fisher(like, reduction, None, fn_name), "fisher"
    else:
        mc_samples = check_count(mc_samples, "mc_samples", fn_name)
        if key is None:
            msg = f"{fn_name} with mc_samples needs key=, e.g. key=jax.random.key(0)."
            raise HVPError(msg)
        key = check_key(key, fn_name)
        curvature, kind = Fisher(like, reduction, mc_samples, fn_name), "fisher_mc"
    return _build((func,), inputs, batches, key, curvature, kind, jit, data_axis)


def empirical_fisher_operator(
    func: Callable,
    loss: Callable,
    inputs: Any,
    *,
    batches: Any = None,
    data_axis: Any = None,
    reduction: str = "mean",
    jit: bool = True,
) -> GGNOperator:
    """The empirical Fisher: ``c sum_n g_n g_n^T`` with ``g_n`` the gradient of example
    ``n``'s loss (the uncentered covariance of the per-example gradients).

    ``loss`` returns one loss per example (unreduced), the examples on the leading axis of
    ``func``'s outputs. ``c`` is 1 / (the number of examples) for ``reduction="mean"`` (the
    default: the matrix that pairs with the mean loss, as curvlinops' ``EFLinearOperator``
    for a loss with ``reduction='mean'`` and one loss per example) and 1 for ``"sum"``.
    A product never forms the per-example gradients: ``g_n^T v`` is the output-space inner
    product of ``r_n = grad_f l_n`` with ``(J v)_n``, and the sum ``sum_n g_n (g_n^T v)`` is
    one vjp. This requires each example's outputs to depend on its own inputs only (no
    batch normalisation across examples).

    Args:
      func: the model; called as in :func:`ggn_operator`; every output leaf has the examples
        on its leading axis.
      loss: ``loss(outputs)`` (with ``batches`` ``loss(outputs, batch)``) -> shape
        ``(num_examples,)``, e.g. ``optax.softmax_cross_entropy_with_integer_labels``.
      inputs: the parameters, as in :func:`jaxhvp.hvp`.
      batches: optionally, data stacked on a leading axis, as in :func:`ggn_operator`.
      data_axis: as in :func:`ggn_operator`.
      reduction: ``"mean"`` (default) or ``"sum"`` over the examples (and the batches).
      jit: as in :func:`jaxhvp.hvp`.

    Returns:
      A :class:`GGNOperator` (``kind="empirical_fisher"``) with ``value`` the reduced loss
      and ``grad`` its gradient.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> x, y = jnp.array([[1.0, 2.0], [3.0, -1.0]]), jnp.array([1.0, 0.0])
      >>> def model(w):
      ...     return x @ w
      >>> def losses(pred):
      ...     return 0.5 * (pred - y) ** 2  # one per example: gradients (pred - y) x
      >>> op = jaxhvp.empirical_fisher_operator(model, losses, jnp.zeros(2))
      >>> op.as_matrix()  # mean of g g^T, g_1 = -(1, 2), g_2 = 0
      Array([[0.5, 1. ],
             [1. , 2. ]], dtype=float32)
    """
    fn_name = "empirical_fisher_operator"
    reduction = _check_reduction(reduction, fn_name)
    curvature = EmpiricalFisher(loss, batches is not None, reduction, fn_name)
    return _build(
        (func, loss), inputs, batches, None, curvature, "empirical_fisher", jit, data_axis
    )


def gnvp(func: Callable, loss: Callable, inputs: Any, v: Any, *, jit: bool = True) -> tuple:
    """A generalized Gauss-Newton-vector product: ``(loss(func(inputs)), G v)``.

    ``G = J^T H_L J`` as in :func:`ggn_operator`, for one vector: one forward pass with a
    tangent, a Hessian product of ``loss`` in output space, and one vjp. ``inputs`` and
    ``v`` follow :func:`jaxhvp.hvp`'s rules (a tuple is unpacked, ``func(*inputs)``).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> def model(w):
      ...     return jnp.stack([w[0] * w[1], w[1]])
      >>> def loss(out):
      ...     return jnp.sum(out**2)
      >>> jaxhvp.gnvp(model, loss, jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]))
      (Array(8., dtype=float32), Array([8., 4.], dtype=float32))
    """
    check_callable(func, "gnvp")
    check_callable(loss, "gnvp")
    value, product = _eager.call(_gnvp, (), (func, loss), (inputs, v), jit=jit)
    return value, _sharding.match_layout(product, inputs)


def _gnvp(funcs: tuple, inputs: Any, v: Any) -> tuple:
    func, loss = funcs
    spec, vector = as_primals_and_tangents(inputs, v, "gnvp")
    curvature = LossHessian(loss, False, "gnvp")
    model = Model(func, spec.is_tuple, False)
    f, jvp = jax.linearize(lambda p: model(p, None), spec.primals)
    value, cu = jax.jvp(
        lambda out: jax.value_and_grad(lambda o: curvature.value(o, None))(out),
        (f,),
        (jvp(vector),),
    )
    cu = jax.tree_util.tree_map(lambda c, y: c.astype(y.dtype), cu[1], f)
    product = jax.linear_transpose(jvp, spec.primals)(cu)[0]
    return value[0], _sharding.match_layout(product, spec.primals)
