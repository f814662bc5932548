"""The implementation registry: name -> factory of a zero-argument callable giving the product.

A factory receives a :class:`Case` (the problem, its JAX and torch views built lazily, and
``k``, the number of vectors) and returns ``call()``. ``call()`` returns the Hessian-vector
product structured like the view's ``params``; a ``kind="batched"`` callable returns the
``k`` products stacked on a leading axis or as a list; a ``kind="grad"`` callable returns the
gradient, the unit that ``per_grad`` divides by. Everything that can be prepared once
(``jit``, ``requires_grad`` copies, split vectors) is prepared in the factory, outside the
timed call.

Names begin with the framework (``jaxhvp``, ``jax`` or ``torch``) so rows group by it, or
with a torch library (``curvlinops``, ``backpack``: framework torch, unit torch's gradient).
jaxhvp rows follow the installed version (:func:`jaxhvp_rows`): one per ``mode=`` value when
``jaxhvp.hvp`` takes ``mode``, an op-by-op row when it takes ``jit``, and the
linearized-operator rows when ``jaxhvp.hessian_operator`` exists. A new row is one ``Impl``
line and, if needed, a factory of a few lines.

Rows marked ``diagnostic`` compare jaxhvp with itself (the other ``mode=`` values,
``jit=False``, and the per-call overhead rows ``[top-level f]``, ``[fresh-data]``,
``[fresh-closure]``): ``python -m bench`` runs them only with ``--diagnostics`` or when
``--impls`` names them.

The generalized Gauss-Newton rows (:func:`ggn_rows`, on the problems split as a model and a
loss in output space) give ``G v = J^T H_L J v`` (``kind="ggn"``), Hutchinson's estimate of
the GGN diagonal with ``k`` probes (``kind="diagonal"``: time per probe, the operator built
outside the timed calls, every call drawing the same probes), and the exact GGN diagonal
(``kind="exact_diagonal"``). Each is checked against its own reference (``Impl.reference``,
see :func:`bench.problems.references`). A row that cannot run on a problem says why
(``Impl.skip``): status ``skipped``, never an error.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import torch
import torch.autograd.functional as taf
import torch.func as tfn
from jax import lax

import jaxhvp

from . import problems

MODES = ("fwd-rev", "rev-rev", "rev-fwd", "auto")
CHUNK = 8  # vectors per chunk in the chunked batched rows
PROBES = 16  # Hutchinson probes per call in the diagonal rows (time per probe is reported)
PROBES_QUICK = 8
# The most outputs per example for which jaxhvp's exact GGN diagonal is run: it forms each
# example's (outputs x outputs) loss Hessian block, eigendecomposes it, one vjp per output.
EXACT_DIAGONAL_MAX_OUTPUTS = 4096
FRAMEWORKS = {
    "jaxhvp": "jaxhvp",
    "jax": "jax",
    "torch": "torch",
    "curvlinops": "torch",
    "backpack": "torch",
}


@dataclasses.dataclass
class Case:
    problem: problems.Problem
    k: int = 1

    @functools.cached_property
    def jax(self) -> problems.View:
        return problems.jax_view(self.problem, self.k)

    @functools.cached_property
    def torch(self) -> problems.View:
        return problems.torch_view(self.problem, self.k)


Factory = Callable[[Case], Callable[[], Any]]


@dataclasses.dataclass(frozen=True)
class Impl:
    name: str
    factory: Factory
    # "grad" (the unit), "hvp", "overhead", "plain", "batched", or the GGN rows' "ggn",
    # "diagonal" (k = the probes) and "exact_diagonal"
    kind: str = "hvp"
    quick: bool = True  # part of --quick
    isolate: bool = False  # always in its own time-boxed process (torch.compile)
    reference: str | None = None  # the part of problems.references it is checked against
    slow: bool = False  # every call takes seconds: no warm-up, one timed call
    skip: Callable[[problems.Problem], str | None] | None = None  # why it cannot run there
    # An internal comparison (python -m bench --diagnostics, or named with --impls): mode=
    # rows, jit=False, the per-call overhead rows behind interleaved.md and the overhead line
    diagnostic: bool = False

    @property
    def framework(self) -> str:
        return next(f for prefix, f in FRAMEWORKS.items() if self.name.startswith(prefix))

    def applies(self, problem: problems.Problem) -> bool:
        if self.kind == "overhead":
            return problem.overhead
        if self.kind == "plain":
            return problem.overhead and problem.plain_jax_loss is not None
        if self.kind == "batched":
            return problem.batched
        if self.kind in GGN_KINDS:
            return problem.splits
        return True

    def skip_reason(self, problem: problems.Problem) -> str | None:
        """Why this row cannot run on ``problem`` (None: it runs)."""
        return None if self.skip is None else self.skip(problem)

    def row_names(self, problem: problems.Problem, quick: bool) -> list[tuple[str, int]]:
        """``(row name, k)`` for each row this implementation gives on ``problem``."""
        if not self.applies(problem):
            return []
        if self.kind == "batched":
            return [
                (f"{self.name} [k={k}]", k) for k in (problems.KS_QUICK if quick else problems.KS)
            ]
        if self.kind == "diagonal":
            probes = PROBES_QUICK if quick else PROBES
            return [(f"{self.name} [probes={probes}]", probes)]
        return [(self.name, 1)]


GGN_KINDS = ("ggn", "diagonal", "exact_diagonal")


UNITS = {"jaxhvp": "jax.grad", "jax": "jax.grad", "torch": "torch.autograd.grad"}


# --- JAX -------------------------------------------------------------------------------------


def _jax_fwd_rev(loss: Callable) -> Callable:
    """Hand-written forward-over-reverse, with the data as an argument: a closed-over array
    would be compiled in as a constant."""

    def hvp(p: Any, d: dict, v: Any) -> Any:
        return jax.jvp(jax.grad(lambda q: loss(q, d)), (p,), (v,))[1]

    return hvp


def _jax_value_fwd_rev(loss: Callable) -> Callable:
    """The same, also returning the loss: what jaxhvp.hvp returns (and torch's hvp)."""

    def hvp(p: Any, d: dict, v: Any) -> Any:
        f = lambda q: loss(q, d)  # noqa: E731
        return f(p), jax.jvp(jax.grad(f), (p,), (v,))[1]

    return hvp


def _jax_rev_rev(loss: Callable) -> Callable:
    def vhp(p: Any, d: dict, v: Any) -> Any:
        return jax.vjp(jax.grad(lambda q: loss(q, d)), p)[1](v)[0]

    return vhp


def jax_grad(c: Case) -> Callable:
    grad, j = jax.jit(jax.grad(c.jax.loss)), c.jax
    return lambda: grad(j.params, j.data)


def jax_jit(compose: Callable) -> Factory:
    def factory(c: Case) -> Callable:
        f, j = jax.jit(compose(c.jax.loss)), c.jax
        return lambda: f(j.params, j.data, j.v)

    return factory


def jax_value_and_hvp(c: Case) -> Callable:
    f, j = jax.jit(_jax_value_fwd_rev(c.jax.loss)), c.jax
    return lambda: f(j.params, j.data, j.v)[1]


def jax_plain(c: Case) -> Callable:
    """The issue's hand-written jit: ``jax.jit(lambda x, v: jax.jvp(jax.grad(f), (x,), (v,)))``
    of a top-level ``f``."""
    f, j = c.problem.plain_jax_loss, c.jax
    hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(f), (x,), (v,)))
    return lambda: hvp(j.params, j.v)[1]


def jax_fresh_data(c: Case) -> Callable:
    f, j = jax.jit(_jax_fwd_rev(c.jax.loss)), c.jax
    return lambda: f(j.params, j.fresh_data(), j.v)


def jax_vmap(c: Case) -> Callable:
    f, j = jax.jit(jax.vmap(_jax_fwd_rev(c.jax.loss), in_axes=(None, None, 0))), c.jax
    return lambda: f(j.params, j.data, j.stacked)


def jax_chunked(c: Case) -> Callable:
    one = _jax_fwd_rev(c.jax.loss)
    f = jax.jit(lambda p, d, vs: lax.map(lambda v: one(p, d, v), vs, batch_size=CHUNK))
    j = c.jax
    return lambda: f(j.params, j.data, j.stacked)


def jax_loop(c: Case) -> Callable:
    f, j = jax.jit(_jax_fwd_rev(c.jax.loss)), c.jax
    return lambda: [f(j.params, j.data, v) for v in j.vs]


# --- jaxhvp ----------------------------------------------------------------------------------


def jaxhvp_call(fn: Callable, **kwargs: Any) -> Factory:
    def factory(c: Case) -> Callable:
        j = c.jax
        return lambda: fn(j.func, j.params, j.v, **kwargs)[1]

    return factory


def jaxhvp_jit(c: Case) -> Callable:
    loss = c.jax.loss
    f = jax.jit(lambda p, d, v: jaxhvp.hvp(lambda q: loss(q, d), p, v)[1])
    j = c.jax
    return lambda: f(j.params, j.data, j.v)


def jaxhvp_plain(c: Case) -> Callable:
    f, j = c.problem.plain_jax_loss, c.jax
    return lambda: jaxhvp.hvp(f, j.params, j.v)[1]


def jaxhvp_fresh_data(c: Case) -> Callable:
    """The same function on every call, reading a new batch (a fresh device array) from a
    dict: the same-function counterpart of the fresh-closure row."""
    loss, fresh_data, params, v = c.jax.loss, c.jax.fresh_data, c.jax.params, c.jax.v
    current = {}

    def func(p: Any) -> Any:
        return loss(p, current["batch"])

    def call() -> Any:
        current["batch"] = fresh_data()
        return jaxhvp.hvp(func, params, v)[1]

    return call


def jaxhvp_fresh_closure(c: Case) -> Callable:
    """``jaxhvp.hvp(lambda p: loss(p, batch), params, v)`` with a new lambda and a new batch
    (a fresh device array) on every call."""
    loss, fresh_data, params, v = c.jax.loss, c.jax.fresh_data, c.jax.params, c.jax.v

    def call() -> Any:
        batch = fresh_data()
        return jaxhvp.hvp(lambda p: loss(p, batch), params, v)[1]

    return call


def jaxhvp_loop(c: Case) -> Callable:
    j = c.jax
    return lambda: [jaxhvp.hvp(j.func, j.params, v)[1] for v in j.vs]


def jaxhvp_vmap(c: Case) -> Callable:
    j = c.jax
    return lambda: jax.vmap(lambda v: jaxhvp.hvp(j.func, j.params, v)[1])(j.stacked)


def jaxhvp_operator_apply(c: Case) -> Callable:
    """Products from an operator built once, outside the timed calls: the cost of reuse. The
    first call builds it, so ``compile_s`` includes the linearization."""
    j, ops = c.jax, []

    def call() -> Any:
        if not ops:
            ops.append(jaxhvp.hessian_operator(j.func, j.params))
        return ops[0](j.v)

    return call


def jaxhvp_operator_batched(how: str) -> Factory:
    """A fresh operator per call, then its k products (``how``: a Python loop, ``matmat``
    vmapped, or ``matmat`` in chunks): comparable with k fresh ``hvp`` calls."""

    def factory(c: Case) -> Callable:
        j = c.jax

        def call() -> Any:
            op = jaxhvp.hessian_operator(j.func, j.params)
            if how == "loop":
                return [op(v) for v in j.vs]
            return op.matmat(j.stacked, batch_size=CHUNK if how == "chunked" else None)

        return call

    return factory


# --- torch -----------------------------------------------------------------------------------


def _leaves(params: Any) -> tuple:
    return params if isinstance(params, tuple) else (params,)


def _requiring_grad(params: Any) -> tuple:
    return tuple(p.detach().clone().requires_grad_() for p in _leaves(params))


def _star(view: problems.View) -> Callable:
    """The loss as ``func(*tensors)``, torch.autograd.functional's calling convention."""
    single = not isinstance(view.params, tuple)
    return lambda *ts: view.func(ts[0] if single else ts)


def torch_grad(c: Case) -> Callable:
    t = c.torch
    leaves = _requiring_grad(t.params)
    f = _star(t)
    return lambda: torch.autograd.grad(f(*leaves), leaves)


def torch_functional(fn: Callable) -> Factory:
    def factory(c: Case) -> Callable:
        t = c.torch
        f = _star(t)
        return lambda: fn(f, t.params, t.v)[1]

    return factory


def torch_fresh_closure(c: Case) -> Callable:
    loss, fresh_data, params, v = c.torch.loss, c.torch.fresh_data, c.torch.params, c.torch.v
    single = not isinstance(params, tuple)

    def call() -> Any:
        batch = fresh_data()
        return taf.hvp(lambda *ts: loss(ts[0] if single else ts, batch), params, v)[1]

    return call


def torch_functional_loop(c: Case) -> Callable:
    t = c.torch
    f = _star(t)
    return lambda: [taf.hvp(f, t.params, v)[1] for v in t.vs]


def _torch_fwd_rev(view: problems.View) -> Callable:
    grad = tfn.grad(view.func)
    return lambda p, v: tfn.jvp(grad, (p,), (v,))[1]


def torch_jvp_grad(c: Case) -> Callable:
    t, f = c.torch, _torch_fwd_rev(c.torch)
    return lambda: f(t.params, t.v)


def torch_compiled(c: Case) -> Callable:
    t, f = c.torch, torch.compile(_torch_fwd_rev(c.torch))
    return lambda: f(t.params, t.v)


def torch_compiled_value(c: Case) -> Callable:
    """The compiled product that also returns the loss, as jaxhvp.hvp and torch's hvp do."""
    t, grad = c.torch, tfn.grad_and_value(c.torch.func)

    def value_and_hvp(p: Any, v: Any) -> Any:
        (_, value), (hv, _) = tfn.jvp(grad, (p,), (v,))
        return value, hv

    f = torch.compile(value_and_hvp)
    return lambda: f(t.params, t.v)[1]


def torch_compiled_grad(c: Case) -> Callable:
    """torch.compile's gradient: the unit of torch.compile's product over gradient ratio."""
    t, f = c.torch, torch.compile(tfn.grad(c.torch.func))
    return lambda: f(t.params)


def torch_vmap(chunk_size: int | None) -> Factory:
    def factory(c: Case) -> Callable:
        t, one = c.torch, _torch_fwd_rev(c.torch)
        f = tfn.vmap(lambda v: one(t.params, v), chunk_size=chunk_size)
        return lambda: f(t.stacked)

    return factory


def torch_double_backward(c: Case) -> Callable:
    """The hand-written way: differentiate the gradient's dot product with v."""
    t = c.torch
    leaves, f, v = _requiring_grad(t.params), _star(t), _leaves(t.v)

    def call() -> Any:
        g = torch.autograd.grad(f(*leaves), leaves, create_graph=True)
        return torch.autograd.grad(g, leaves, grad_outputs=v)

    return call


def torch_double_backward_reuse(batched: bool) -> Factory:
    """The gradient's graph built once per call and reused for the k backward passes: torch's
    counterpart of a linearized operator. ``batched`` runs them with ``is_grads_batched``."""

    def factory(c: Case) -> Callable:
        t = c.torch
        leaves, f = _requiring_grad(t.params), _star(t)
        vs = [_leaves(v) for v in t.vs]
        stacked = _leaves(t.stacked)

        def call() -> Any:
            g = torch.autograd.grad(f(*leaves), leaves, create_graph=True)
            if batched:
                return torch.autograd.grad(g, leaves, grad_outputs=stacked, is_grads_batched=True)
            return [torch.autograd.grad(g, leaves, grad_outputs=v, retain_graph=True) for v in vs]

        return call

    return factory


# --- the generalized Gauss-Newton: products and diagonals --------------------------------------


def _first_vector(problem: problems.Problem) -> dict:
    return {n: x[0] for n, x in problem.vectors(1).items()}


def jax_ggnvp(c: Case) -> Callable:
    """Hand-written ``J^T H_L J v``: the model's jvp, forward-over-reverse on the loss in
    output space, the model's vjp; jit-compiled, the data as an argument."""
    model, output_loss = c.problem.jax_model, c.problem.jax_output_loss
    names = c.problem.names

    def ggnvp(p: dict, d: dict, v: dict) -> dict:
        def f(q: dict) -> Any:
            return model(problems._unpack(names, q), d)

        out, jv = jax.jvp(f, (p,), (v,))
        hjv = jax.jvp(jax.grad(lambda o: output_loss(o, d)), (out,), (jv,))[1]
        return jax.vjp(f, p)[1](hjv)[0]

    f, j = jax.jit(ggnvp), c.jax
    return lambda: f(j.params, j.data, j.v)


def jaxhvp_gnvp(c: Case) -> Callable:
    j = c.jax
    return lambda: jaxhvp.gnvp(j.model, j.output_loss, j.params, j.v)[1]


def jaxhvp_ggn_apply(c: Case) -> Callable:
    """``op @ v`` with ``op = jaxhvp.ggn_operator(...)`` built once, in the first call (so
    ``compile_s`` includes it: the loss and gradient the operator carries)."""
    j, ops = c.jax, []

    def call() -> Any:
        if not ops:
            ops.append(jaxhvp.ggn_operator(j.model, j.output_loss, j.params))
        return ops[0] @ j.v

    return call


def _jaxhvp_ggn(problem: problems.Problem) -> Any:
    """The GGN operator of the problem's one-vector JAX view (no k vectors made)."""
    j = problems.jax_view(problem)
    return jaxhvp.ggn_operator(j.model, j.output_loss, j.params)


def jaxhvp_hutchinson(c: Case) -> Callable:
    op, key = _jaxhvp_ggn(c.problem), jax.random.key(problems.PROBE_SEED)
    return lambda: jaxhvp.spectrum.diagonal(op, key=key, num_probes=c.k, method="hutchinson").value


def jaxhvp_exact_diagonal(c: Case) -> Callable:
    """The GGN over the problem's data as one batch (``batches=``), so that the exact
    diagonal can run example by example (jaxhvp checks that this is exact)."""
    p = c.problem
    batches = jax.tree_util.tree_map(lambda x: x[None], p.data)
    op = jaxhvp.ggn_operator(p.jax_model, p.jax_output_loss, p.params, batches=batches)
    return lambda: op.exact_diagonal()


def torch_ggnvp(c: Case) -> Callable:
    """Hand-written with torch.func: jvp of the model, Hessian-vector product of the loss in
    output space (forward over reverse), vjp of the model."""
    t = c.torch
    loss_grad = tfn.grad(t.output_loss)

    def call() -> Any:
        out, jv = tfn.jvp(t.model, (t.params,), (t.v,))
        hjv = tfn.jvp(loss_grad, (out,), (jv,))[1]
        return tfn.vjp(t.model, t.params)[1](hjv)[0]

    return call


def _curvlinops_ggn(problem: problems.Problem) -> tuple[Any, problems.TorchModules]:
    m = problem.torch_modules(problem)
    op = problems.curvlinops().GGNLinearOperator(
        m.model, m.loss, m.params, [(m.X, m.y)], check_deterministic=False
    )
    return op, m


def curvlinops_ggn(c: Case) -> Callable:
    op, m = _curvlinops_ggn(c.problem)
    v = m.to_module(_first_vector(c.problem))
    return lambda: m.to_problem(op @ v)


def curvlinops_hutchinson(c: Case) -> Callable:
    """``curvlinops.hutchinson_diag`` after ``torch.manual_seed``: the same probes in every
    call, the ones its reference uses."""
    hutchinson_diag = problems.curvlinops().hutchinson_diag
    op, m = _curvlinops_ggn(c.problem)

    def call() -> Any:
        torch.manual_seed(problems.PROBE_SEED)
        return m.to_problem(m.unflatten(hutchinson_diag(op, c.k)))

    return call


def backpack_diag_ggn(c: Case) -> Callable:
    """BackPACK's ``DiagGGNExact`` on the extended module and loss: one forward pass and one
    backward pass that also computes the gradient."""
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact

    m = c.problem.torch_modules(c.problem)
    model, loss = extend(m.model), extend(m.loss)

    def call() -> Any:
        model.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the data do not require grad: a hook says so
            warnings.filterwarnings("ignore", "Full backward hook", UserWarning)
            value = loss(model(m.X), m.y)
            with backpack(DiagGGNExact()):
                value.backward()
        return m.to_problem([p.diag_ggn_exact for p in m.params])

    return call


def _missing(module: str, install: str) -> Callable[[problems.Problem], str | None]:
    def reason(problem: problems.Problem) -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({install})"
        return None

    return reason


def _backpack_skip(problem: problems.Problem) -> str | None:
    missing = _missing("backpack", "pip install -e '.[bench]'")
    return missing(problem) or problem.backpack_unsupported


def model_outputs(problem: problems.Problem) -> int:
    """The number of outputs of the problem's model on its batch."""
    shape = jax.eval_shape(problem.jax_model, problem.params, problem.data)
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shape))


def _exact_diagonal_skip(problem: problems.Problem) -> str | None:
    """jaxhvp's exact GGN diagonal, example by example, eigendecomposes each example's
    (slots x slots) output-space block and takes one single-example vjp per slot."""
    outputs, size = model_outputs(problem), problem.size
    examples = jax.tree_util.tree_leaves(problem.data)[0].shape[0]
    slots = outputs // examples
    limit = EXACT_DIAGONAL_MAX_OUTPUTS
    if min(slots, size) <= limit:
        return None
    if size <= slots:
        return f"{size} parameters: jaxhvp's exact diagonal takes {size} products (limit {limit})"
    return (
        f"{slots} outputs per example: jaxhvp's exact GGN diagonal eigendecomposes each "
        f"example's {slots} x {slots} output-space block and takes {slots} vjps per example; "
        f"this benchmark runs it up to {limit} outputs per example"
    )


def ggn_rows() -> list[Impl]:
    """The GGN rows: products, Hutchinson diagonals, exact diagonals (problems that split)."""
    curvlinops = _missing("curvlinops", "pip install -e '.[bench]'")
    return [
        Impl("jaxhvp.gnvp", jaxhvp_gnvp, kind="ggn", reference="ggn"),
        Impl("jaxhvp.ggn_operator[apply]", jaxhvp_ggn_apply, kind="ggn", reference="ggn"),
        Impl("jax.jit(vjp(hvp_L(jvp)))", jax_ggnvp, kind="ggn", reference="ggn"),
        Impl(
            "curvlinops.GGNLinearOperator[apply]",
            curvlinops_ggn,
            kind="ggn",
            reference="ggn",
            skip=curvlinops,
        ),
        Impl("torch.func.vjp(hvp_L(jvp))", torch_ggnvp, kind="ggn", reference="ggn"),
        Impl(
            "jaxhvp.spectrum.diagonal(ggn, hutchinson)",
            jaxhvp_hutchinson,
            kind="diagonal",
            reference="hutchinson:jaxhvp",
        ),
        Impl(
            "curvlinops.hutchinson_diag(GGN)",
            curvlinops_hutchinson,
            kind="diagonal",
            reference="hutchinson:torch",
            skip=curvlinops,
        ),
        Impl(
            "jaxhvp.ggn_operator.exact_diagonal",
            jaxhvp_exact_diagonal,
            kind="exact_diagonal",
            reference="ggn_diag",
            slow=True,
            skip=_exact_diagonal_skip,
        ),
        Impl(
            "backpack.DiagGGNExact",
            backpack_diag_ggn,
            kind="exact_diagonal",
            reference="ggn_diag",
            skip=_backpack_skip,
        ),
    ]


# --- the registry ----------------------------------------------------------------------------


def jaxhvp_rows() -> tuple[list[Impl], list[Impl]]:
    """The jaxhvp rows that exist in the installed version: (one vector, k vectors)."""
    options = inspect.signature(jaxhvp.hvp).parameters
    single = [Impl("jaxhvp.hvp", jaxhvp_call(jaxhvp.hvp))]
    if "mode" in options:  # the default mode is the plain jaxhvp.hvp row
        single += [
            Impl(f"jaxhvp.hvp(mode={m})", jaxhvp_call(jaxhvp.hvp, mode=m), diagnostic=True)
            for m in MODES
            if m != options["mode"].default
        ]
    if "jit" in options:  # the kernel cache's opt-out: op by op
        single.append(
            Impl("jaxhvp.hvp(jit=False)", jaxhvp_call(jaxhvp.hvp, jit=False), diagnostic=True)
        )
    single += [Impl("jaxhvp.vhp", jaxhvp_call(jaxhvp.vhp)), Impl("jaxhvp.hvp[jit]", jaxhvp_jit)]
    batched = [
        Impl("jaxhvp.hvp[loop]", jaxhvp_loop, kind="batched"),
        Impl("jaxhvp.hvp[vmap]", jaxhvp_vmap, kind="batched"),
    ]
    if hasattr(jaxhvp, "hessian_operator"):
        single.append(Impl("jaxhvp.hessian_operator[apply]", jaxhvp_operator_apply))
        batched.append(
            Impl("jaxhvp.hessian_operator[loop]", jaxhvp_operator_batched("loop"), kind="batched")
        )
        if hasattr(getattr(jaxhvp, "HessianOperator", None), "matmat"):
            batched += [
                Impl(
                    "jaxhvp.hessian_operator.matmat",
                    jaxhvp_operator_batched("vmap"),
                    kind="batched",
                ),
                Impl(
                    f"jaxhvp.hessian_operator.matmat[chunk={CHUNK}]",
                    jaxhvp_operator_batched("chunked"),
                    kind="batched",
                ),
            ]
    return single, batched


def registry() -> list[Impl]:
    """Every implementation, in display order: the two gradient units first."""
    jaxhvp_single, jaxhvp_batched = jaxhvp_rows()
    impls = [
        Impl("jax.grad", jax_grad, kind="grad"),
        Impl("torch.autograd.grad", torch_grad, kind="grad"),
        Impl("torch.compile(grad)", torch_compiled_grad, kind="grad", quick=False, isolate=True),
        # one vector per call
        *jaxhvp_single,
        Impl("jax.jit(jvp(grad))", jax_jit(_jax_fwd_rev)),
        Impl("jax.jit(value+jvp(grad))", jax_value_and_hvp),
        Impl("jax.jit(vjp(grad))", jax_jit(_jax_rev_rev)),
        Impl("torch.autograd.functional.hvp", torch_functional(taf.hvp)),
        Impl("torch.autograd.functional.vhp", torch_functional(taf.vhp)),
        Impl("torch.func.jvp(grad)", torch_jvp_grad),
        Impl("torch.compile(func.jvp(grad))", torch_compiled, quick=False, isolate=True),
        Impl(
            "torch.compile(value+func.jvp(grad))",
            torch_compiled_value,
            quick=False,
            isolate=True,
        ),
        Impl("torch.double-backward", torch_double_backward),
        # per-call overhead: a top-level f; a new closure over new data on every call
        *(
            dataclasses.replace(impl, diagnostic=True)
            for impl in (
                Impl("jaxhvp.hvp[top-level f]", jaxhvp_plain, kind="plain"),
                Impl("jax.jit(jvp(grad))[top-level f]", jax_plain, kind="plain"),
                Impl("jaxhvp.hvp[fresh-closure]", jaxhvp_fresh_closure, kind="overhead"),
                Impl("jaxhvp.hvp[fresh-data]", jaxhvp_fresh_data, kind="overhead"),
                Impl("jax.jit(jvp(grad))[fresh-data]", jax_fresh_data, kind="overhead"),
                Impl(
                    "torch.autograd.functional.hvp[fresh-closure]",
                    torch_fresh_closure,
                    kind="overhead",
                ),
            )
        ),
        # k vectors per call
        *jaxhvp_batched,
        Impl("jax.jit(jvp(grad))[loop]", jax_loop, kind="batched"),
        Impl("jax.jit(vmap(jvp(grad)))", jax_vmap, kind="batched"),
        Impl(f"jax.jit(lax.map(jvp(grad)))[chunk={CHUNK}]", jax_chunked, kind="batched"),
        Impl("torch.autograd.functional.hvp[loop]", torch_functional_loop, kind="batched"),
        Impl(
            "torch.double-backward[reuse-loop]", torch_double_backward_reuse(False), kind="batched"
        ),
        Impl(
            "torch.double-backward[is_grads_batched]",
            torch_double_backward_reuse(True),
            kind="batched",
        ),
        Impl("torch.func.vmap(jvp(grad))", torch_vmap(None), kind="batched"),
        Impl(f"torch.func.vmap(jvp(grad))[chunk={CHUNK}]", torch_vmap(CHUNK), kind="batched"),
        # the generalized Gauss-Newton (problems split as a model and a loss)
        *(ggn_rows() if hasattr(jaxhvp, "ggn_operator") else []),
    ]
    names = [i.name for i in impls]
    assert len(names) == len(set(names)), "implementation names must be unique"
    return impls


def by_name() -> dict[str, Impl]:
    return {impl.name: impl for impl in registry()}
