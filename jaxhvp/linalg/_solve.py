"""``solve``: ``(A + damping I) x = b`` for any jaxhvp operator, by one of four methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _eager, _sharding, _tree
from .._errors import HVPError
from .._structure import difference
from .._validate import check_choice, check_count, check_key
from ..operators import Operator
from ..spectrum._eigen import DEFAULT_MAX_MATVECS
from . import _approximate, _krylov
from ._preconditioners import Preconditioner
from ._result import SolveInfo, SolveStatus

_NAME = "solve"
METHODS = ("cg", "minres", "lissa", "lowrank")


class Settings(NamedTuple):
    """The traced options of a solve: changing them does not recompile."""

    damping: jax.Array
    tol: jax.Array
    atol: jax.Array
    maxiter: jax.Array
    scale: jax.Array  # LiSSA's


class Plan(NamedTuple):
    """The static options of a solve: they shape the compiled program."""

    method: str
    rank: int | None  # lowrank's
    krylov_dim: int | None
    preconditioned: str | None  # None, "object" (a Preconditioner) or "callable"


def solve(
    op: Operator,
    b: Any,
    *,
    damping: Any = 0.0,
    method: str = "cg",
    x0: Any = None,
    tol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    preconditioner: Any = None,
    scale: Any = None,
    rank: int | None = None,
    key: jax.Array | None = None,
    throw: bool = False,
) -> tuple[Any, SolveInfo]:
    """Solves ``(A + damping I) x = b`` for a jaxhvp operator ``A``, over pytrees.

    ``b``, ``x0`` and ``x`` have the structure, shapes and dtypes of the operator's vectors
    (``op.like``): the parameters' pytree, never flattened. Works eagerly (one compiled
    kernel; changing ``damping``, ``tol``, ``maxiter`` or ``scale`` does not recompile) and
    under ``jax.jit``, ``jax.vmap`` (many right-hand sides; a low-rank eigensolve or a
    preconditioner is computed once) and ``lax`` loops. Failures are status codes in the
    returned :class:`SolveInfo`, never exceptions inside a compiled program.

    Methods (see the inverse-products page of the docs for when to use which):

    * ``"cg"`` (default): conjugate gradients, optionally preconditioned; for positive
      definite ``A + damping I`` (a GGN, a Fisher, a Hessian near a minimum, any of them
      damped). Stops at ``||r|| <= max(tol ||b||, atol)`` or ``maxiter`` (default
      ``10 n``) steps; a direction of non-positive curvature stops it with ``INDEFINITE``.
      One product per step.
    * ``"minres"``: MINRES, for symmetric indefinite systems (a Hessian away from a
      minimum, damped or not); minimises the residual over the Krylov space. Same
      stopping rule, ``maxiter`` default ``5 n``. One product per step.
    * ``"lissa"``: LiSSA, the stochastic Neumann series of influence-function papers; each
      step is a product on one batch of the operator's ``batches`` (the whole operator
      without batches). Needs ``scale`` above the largest eigenvalue of every batch's
      ``A + damping I``; runs ``maxiter`` steps (default 1000; its depth).
    * ``"lowrank"``: inverts on the top-``rank`` eigenspace by magnitude (Lanczos, with
      ``key``; ``maxiter`` bounds its products, default 1000) and drops the rest; cheap
      per right-hand side once the eigenpairs exist.

    For every method ``info.residual`` is the true relative residual of the returned ``x``,
    from one extra product. CG and MINRES report ``SUCCESS`` when their recurrence residual
    met the tolerance; LiSSA and low rank when the true residual is at most ``tol`` (so an
    approximation that misses by more says ``NOT_CONVERGED``, with the residual to show by
    how much: loosen ``tol`` to accept it).

    Args:
      op: any :class:`jaxhvp.Operator` (Hessian, GGN, Fisher, empirical Fisher, batch,
        block, or their sums and scalings).
      b: the right-hand side, in the structure of ``op.like``.
      damping: ``lambda`` of ``A + lambda I``, a number or scalar array (may be traced).
      method: ``"cg"``, ``"minres"``, ``"lissa"`` or ``"lowrank"``.
      x0: a starting point for ``"cg"``, ``"minres"`` and ``"lissa"`` (default zeros), e.g.
        the last step's solution (warm start).
      tol: the relative tolerance on ``||b - (A + damping I) x||``.
      atol: an absolute tolerance (``"cg"``, ``"minres"``).
      maxiter: the steps (``"lissa"``: the depth; ``"lowrank"``: the Lanczos products).
      preconditioner: ``"cg"`` only: a :class:`jaxhvp.linalg.Preconditioner`
        (:func:`jaxhvp.linalg.diagonal_preconditioner`,
        :func:`jaxhvp.linalg.nystrom_preconditioner`) applied with this call's damping, or
        a function ``v -> M v`` approximating the inverse of ``A + damping I``.
      scale: ``"lissa"`` only, required: the series' scale.
      rank: ``"lowrank"`` only, required: the number of eigenpairs.
      key: ``"lowrank"`` only, required: the PRNG key of the Lanczos start.
      throw: if True, an eager call whose status is not ``SUCCESS`` raises
        :class:`jaxhvp.HVPError` with the message (not under ``jax.jit``).

    Returns:
      ``(x, info)``: the solution in the structure of ``b``, and a :class:`SolveInfo`
      ``(status, residual, iterations, num_matvecs)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> def loss(w):  # Hessian [[2, 1], [1, 2]]
      ...     return w[0] ** 2 + w[1] ** 2 + w[0] * w[1]
      >>> op = jaxhvp.hessian_operator(loss, jnp.zeros(2))
      >>> x, info = jaxhvp.solve(op, jnp.array([4.0, 4.0]), damping=1.0)
      >>> x, info.message, int(info.iterations)
      (Array([1., 1.], dtype=float32), 'The residual is within the tolerance.', 1)
    """
    if not isinstance(op, Operator):
        msg = (
            f"op given to {_NAME} must be a jaxhvp operator (jaxhvp.hessian_operator, "
            f"jaxhvp.ggn_operator, jaxhvp.fisher_operator, ...), but got {type(op)}. Wrap a "
            "loss with jaxhvp.hessian_operator(loss, params)."
        )
        raise TypeError(msg)
    method = check_choice(method, "method", METHODS, _NAME)
    b = check_vector(b, op, "b", _NAME)
    x0 = None if x0 is None else check_vector(x0, op, "x0", _NAME)
    plan, settings, extra = prepare(
        op, method, damping, tol, atol, maxiter, preconditioner, scale, rank, key, x0, _NAME
    )
    if throw and not _eager.is_eager((b, settings)):
        msg = (
            f"throw=True needs an eager call of {_NAME}: under jax.jit the status is not "
            "known yet. Check info.status instead."
        )
        raise HVPError(msg)
    if plan.preconditioned == "callable":  # a function: walked with the operator, so cached
        func, extra = (op, extra), None
    else:
        func = op
    x, info = _eager.call(_solve, (plan,), func, (b, x0, settings, extra))
    x = _sharding.match_layout(x, op.like)  # eager: moved where XLA laid it out otherwise
    if throw and int(info.status) != SolveStatus.SUCCESS:
        msg = (
            f"{_NAME}(method={method!r}) failed: {info.message} Relative residual "
            f"{float(info.residual):.3g} after {int(info.iterations)} iterations."
        )
        raise HVPError(msg)
    return x, info


def prepare(
    op: Operator,
    method: str,
    damping: Any,
    tol: Any,
    atol: Any,
    maxiter: Any,
    preconditioner: Any,
    scale: Any,
    rank: Any,
    key: Any,
    x0: Any,
    fn_name: str,
) -> tuple[Plan, Settings, Any]:
    """Checks the options of a method; returns its plan, settings and the extra argument
    (a preconditioner, or the low-rank method's key)."""
    n = sum(x.size for x in jax.tree_util.tree_leaves(op.like))
    dtype = _tree.accumulator(op.like)
    allowed = {
        "cg": {"preconditioner"},
        "minres": set(),
        "lissa": {"scale"},
        "lowrank": {"rank", "key"},
    }[method]
    given = {"preconditioner": preconditioner, "scale": scale, "rank": rank, "key": key}
    for name, value in given.items():
        if value is not None and name not in allowed:
            msg = f"{name}= is not an option of method={method!r} in {fn_name}; drop it."
            raise HVPError(msg)
    if method == "lowrank" and x0 is not None:
        msg = f"method='lowrank' in {fn_name} takes no x0 (it is not iterative in x); drop x0."
        raise HVPError(msg)
    default_maxiter = {"cg": 10 * n, "minres": 5 * n, "lissa": 1000}.get(
        method, DEFAULT_MAX_MATVECS
    )
    if maxiter is None:
        maxiter = default_maxiter
    elif not (isinstance(maxiter, jax.core.Tracer) and method != "lowrank"):  # traced: as is
        maxiter = check_count(maxiter, "maxiter", fn_name)
    if method == "lissa" and scale is None:
        msg = (
            f"method='lissa' in {fn_name} needs scale=: a number above the largest eigenvalue "
            "of A + damping I on any one batch (e.g. 2 x jaxhvp.spectrum.eigenvalues(op, "
            "key=...).values[0]); too small a scale makes the series diverge."
        )
        raise HVPError(msg)
    settings = Settings(
        damping=_scalar(damping, "damping", dtype, fn_name),
        tol=_scalar(tol, "tol", dtype, fn_name, positive=True),
        atol=_scalar(atol, "atol", dtype, fn_name),
        maxiter=jnp.asarray(maxiter, jnp.int32),
        scale=_scalar(1.0 if scale is None else scale, "scale", dtype, fn_name, positive=True),
    )
    extra, rank_, krylov_dim, preconditioned = None, None, None, None
    if method == "lowrank":
        if rank is None or key is None:
            msg = (
                f"method='lowrank' in {fn_name} needs rank= (how many eigenpairs to invert on) "
                "and key= (for the Lanczos start), e.g. rank=20, key=jax.random.key(0)."
            )
            raise HVPError(msg)
        rank_ = check_count(rank, "rank", fn_name)
        if rank_ > n:
            msg = f"rank given to {fn_name} must be at most the dimension {n}, but got {rank_}."
            raise HVPError(msg)
        krylov_dim = min(n, max(20, 2 * rank_ + 10))
        if maxiter < krylov_dim:
            msg = (
                f"maxiter given to {fn_name} with method='lowrank' bounds the Lanczos products "
                f"and must be at least {krylov_dim} for rank={rank_}, but got {maxiter}."
            )
            raise HVPError(msg)
        extra = check_key(key, fn_name)
    if preconditioner is not None:
        if isinstance(preconditioner, Preconditioner):
            preconditioned = "object"
        elif callable(preconditioner):
            preconditioned = "callable"
        else:
            msg = (
                f"preconditioner given to {fn_name} must be a jaxhvp.linalg.Preconditioner "
                "(jaxhvp.linalg.diagonal_preconditioner, nystrom_preconditioner) or a function "
                f"v -> M v, but got {type(preconditioner)}."
            )
            raise TypeError(msg)
        extra = preconditioner
    return Plan(method, rank_, krylov_dim, preconditioned), settings, extra


def check_vector(v: Any, op: Operator, name: str, fn_name: str) -> Any:
    """``v`` as arrays in the structure, shapes and dtypes of ``op.like``."""

    leaves = jax.tree_util.tree_leaves(v)
    if not all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves) or not leaves:
        msg = (
            f"{name} given to {fn_name} must be a pytree of arrays like the operator's vectors "
            f"(op.like), but got {type(v)}."
        )
        raise TypeError(msg)
    if _tree.signature(op.like) != _tree.signature(v):
        msg = (
            f"{name} given to {fn_name} must have the structure, shapes and dtypes of the "
            f"operator's vectors (op.like), but {_first_difference(op.like, v, name)}. Build "
            "it with jax.tree_util.tree_map over op.like (or op.grad)."
        )
        raise HVPError(msg)
    # in the operator's vectors' layout: explicit meshes need it of a product's tangents
    return _sharding.tangent_layout(jax.tree_util.tree_map(jnp.asarray, v), op.like)


def _first_difference(like: Any, v: Any, name: str) -> str:
    """Where ``v`` first differs from ``like``: a path of the structure, or one leaf."""
    if jax.tree_util.tree_structure(like) != jax.tree_util.tree_structure(v):
        return difference(like, v, "op.like", name)
    pairs = zip(jax.tree_util.tree_flatten_with_path(v)[0], jax.tree_util.tree_leaves(like))
    path, given, expected = next((p, g, e) for (p, g), e in pairs if _leaf(g) != _leaf(e))
    where = jax.tree_util.keystr(path)
    return f"{name}{where} has {_leaf(given)} where op.like{where} has {_leaf(expected)}"


def _leaf(x: Any) -> str:
    return f"shape {tuple(jnp.shape(x))} and dtype {jnp.result_type(x)}"


def _scalar(value: Any, name: str, dtype: Any, fn_name: str, positive: bool = False) -> jax.Array:
    if isinstance(value, bool) or not (
        isinstance(value, (int, float, np.number))
        or (isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0)
    ):
        msg = f"{name} given to {fn_name} must be a real number, but got {value!r}."
        raise HVPError(msg)
    concrete = not isinstance(value, jax.core.Tracer)  # a traced value cannot be checked
    if concrete and (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        msg = f"{name} given to {fn_name} must be {bound}, but got {value!r}."
        raise HVPError(msg)
    return jnp.asarray(value, dtype)


def setup(op: Operator, plan: Plan, settings: Settings, extra: Any) -> Any:
    """What a method computes once for any number of right-hand sides: the low-rank
    eigenspace; otherwise the preconditioner (or nothing)."""
    if plan.method == "lowrank":
        return _approximate.eigenspace(op, extra, settings.maxiter, plan.rank, plan.krylov_dim)
    return extra


def run(
    op: Operator, plan: Plan, settings: Settings, prepared: Any, b: Any, x0: Any
) -> tuple[Any, SolveInfo]:
    """One solve, traced: the method, then the true residual."""
    damping = settings.damping

    def matvec(v: Any) -> Any:
        return _tree.axpy(damping, v, op._product(v))

    b_norm = _tree.norm(b)
    target = jnp.maximum(settings.tol * b_norm, settings.atol)
    if plan.method == "cg":
        outcome = _krylov.cg(
            matvec, b, x0, target, settings.maxiter, _precondition(plan, prepared, damping)
        )
    elif plan.method == "minres":
        outcome = _krylov.minres(matvec, b, x0, target, settings.maxiter)
    elif plan.method == "lissa":
        outcome = _approximate.lissa(op, b, x0, damping, settings.scale, settings.maxiter)
    else:
        outcome = _approximate.lowrank(prepared, b, damping)
    residual_norm = _tree.norm(_tree.sub(b, matvec(outcome.x)))
    residual = jnp.where(
        b_norm > 0, residual_norm / jnp.where(b_norm > 0, b_norm, 1), residual_norm
    )
    by_residual = jnp.where(
        residual <= settings.tol, SolveStatus.SUCCESS, SolveStatus.NOT_CONVERGED
    )
    status = jnp.where(outcome.status == _krylov.DECIDE_BY_RESIDUAL, by_residual, outcome.status)
    status = jnp.where(jnp.isfinite(residual), status, SolveStatus.NONFINITE).astype(jnp.int32)
    info = SolveInfo(status, residual, outcome.iterations, outcome.num_matvecs + 1)
    return outcome.x, info


def _precondition(plan: Plan, prepared: Any, damping: jax.Array) -> Callable:
    if plan.preconditioned == "object":
        return lambda v: prepared.apply(v, damping)
    if plan.preconditioned == "callable":
        return prepared
    return lambda v: v


def _solve(func: Any, b: Any, x0: Any, settings: Settings, extra: Any, plan: Plan) -> Any:
    op, extra = func if plan.preconditioned == "callable" else (func, extra)
    x, info = run(op, plan, settings, setup(op, plan, settings, extra), b, x0)
    return _sharding.match_layout(x, op.like), info
