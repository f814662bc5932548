"""The exact Krylov methods of :func:`jaxhvp.solve`: preconditioned conjugate gradients and
MINRES, each one ``lax.while_loop`` over products with ``A + damping I``, over pytrees.

Both stop when their recurrence residual is at most ``max(tol * ||b||, atol)``, after
``maxiter`` steps, or at a product with NaN or Inf in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .. import _tree
from ._result import SolveStatus


class Outcome(NamedTuple):
    """What a method returns to :func:`jaxhvp.solve`, before the residual check."""

    x: Any
    status: jax.Array  # SolveStatus, or -1 where the true residual decides
    iterations: jax.Array
    num_matvecs: jax.Array


DECIDE_BY_RESIDUAL = -1


def _end(nonfinite: jax.Array, indefinite: jax.Array, converged: jax.Array) -> jax.Array:
    status = jnp.where(converged, SolveStatus.SUCCESS, SolveStatus.NOT_CONVERGED)
    status = jnp.where(indefinite, SolveStatus.INDEFINITE, status)
    return jnp.where(nonfinite, SolveStatus.NONFINITE, status).astype(jnp.int32)


def _start(matvec: Callable, b: Any, x0: Any) -> tuple[Any, Any, int]:
    """The first iterate, its residual, and the products that cost (none from zero)."""
    if x0 is None:
        return _tree.zeros_like(b), b, 0
    return x0, _tree.sub(b, matvec(x0)), 1


class _CG(NamedTuple):
    x: Any
    r: Any  # b - A x
    d: Any  # the search direction
    rz: jax.Array  # <r, M r>
    rnorm: jax.Array
    steps: jax.Array
    indefinite: jax.Array
    nonfinite: jax.Array


def cg(
    matvec: Callable, b: Any, x0: Any, target: jax.Array, maxiter: jax.Array, precondition: Callable
) -> Outcome:
    """Preconditioned conjugate gradients for a symmetric positive definite ``matvec``.

    Stops with ``INDEFINITE`` (keeping the last iterate) at a direction with ``d.Ad <= 0``
    or ``<r, M r> <= 0`` (a preconditioner that is not positive definite).
    """
    x0, r, products = _start(matvec, b, x0)
    z = precondition(r)
    rz = _tree.vdot(r, z)
    start = _CG(x0, r, z, rz, _tree.norm(r), jnp.asarray(0, jnp.int32), rz < 0, ~jnp.isfinite(rz))

    def keep_going(s: _CG) -> jax.Array:
        return (s.rnorm > target) & (s.steps < maxiter) & ~s.indefinite & ~s.nonfinite

    def step(s: _CG) -> _CG:
        ad = matvec(s.d)
        curvature = _tree.vdot(s.d, ad)
        alpha = s.rz / curvature
        x = _tree.axpy(alpha, s.d, s.x)
        r = _tree.axpy(-alpha, ad, s.r)
        z = precondition(r)
        rz = _tree.vdot(r, z)
        d = _tree.axpy(rz / s.rz, s.d, z)
        # A NaN or Inf product is NONFINITE; zero or negative curvature (whose step would be
        # infinite) is INDEFINITE, reported as such, not as the NaN it would cause.
        nonfinite = ~_tree.finite(ad) | ~jnp.isfinite(curvature)
        indefinite = ~nonfinite & ((curvature <= 0) | (rz < 0))
        nonfinite = nonfinite | (~indefinite & ~jnp.isfinite(rz))
        stop = indefinite | nonfinite
        return _CG(
            x=_tree.where(stop, s.x, x),
            r=_tree.where(stop, s.r, r),
            d=d,
            rz=rz,
            rnorm=jnp.where(stop, s.rnorm, _tree.norm(r)),
            steps=s.steps + 1,
            indefinite=indefinite,
            nonfinite=nonfinite,
        )

    s = lax.while_loop(keep_going, step, start)
    status = _end(s.nonfinite, s.indefinite, s.rnorm <= target)
    return Outcome(s.x, status, s.steps, s.steps + products)


class _Minres(NamedTuple):
    x: Any
    v: Any  # the current Lanczos vector r2 (unnormalised), and the previous one r1
    v_old: Any
    w: Any  # the last two search directions
    w_old: Any
    beta: jax.Array
    beta_old: jax.Array
    dbar: jax.Array
    epsilon: jax.Array
    phibar: jax.Array
    cs: jax.Array
    sn: jax.Array
    steps: jax.Array
    nonfinite: jax.Array


def minres(matvec: Callable, b: Any, x0: Any, target: jax.Array, maxiter: jax.Array) -> Outcome:
    """MINRES (Paige and Saunders, 1975) for a symmetric, possibly indefinite ``matvec``:
    the iterate minimising ``||b - A x||`` over the Krylov space, by Lanczos and Givens
    rotations (scipy's ``minres`` without a preconditioner). ``phibar`` is the residual norm
    of the current iterate.
    """
    x0, r, products = _start(matvec, b, x0)
    beta1 = _tree.norm(r)
    wide = beta1.dtype
    zeros = _tree.zeros_like(x0)
    one, zero = jnp.asarray(1, wide), jnp.asarray(0, wide)
    start = _Minres(
        x0, r, r, zeros, zeros, beta1, zero, zero, zero, beta1, -one, zero,
        jnp.asarray(0, jnp.int32), ~jnp.isfinite(beta1),
    )  # fmt: skip
    tiny = jnp.finfo(wide).tiny

    def keep_going(s: _Minres) -> jax.Array:
        return (s.phibar > target) & (s.steps < maxiter) & ~s.nonfinite & (s.beta > tiny)

    def step(s: _Minres) -> _Minres:
        q = _tree.scale(1 / s.beta, s.v)  # the unit Lanczos vector
        y = matvec(q)
        y = _tree.axpy(-jnp.where(s.steps > 0, s.beta / s.beta_old, 0), s.v_old, y)
        alpha = _tree.vdot(q, y)
        y = _tree.axpy(-alpha / s.beta, s.v, y)
        beta = _tree.norm(y)
        # Apply the previous rotation, then make the next one.
        delta = s.cs * s.dbar + s.sn * alpha
        gbar = s.sn * s.dbar - s.cs * alpha
        epsilon = s.sn * beta
        dbar = -s.cs * beta
        gamma = jnp.maximum(jnp.hypot(gbar, beta), jnp.finfo(wide).eps)
        cs, sn = gbar / gamma, beta / gamma
        phi = cs * s.phibar
        w = _tree.scale(1 / gamma, _tree.axpy(-delta, s.w, _tree.axpy(-s.epsilon, s.w_old, q)))
        x = _tree.axpy(phi, w, s.x)
        nonfinite = ~_tree.finite(y) | ~jnp.isfinite(phi)
        return _Minres(
            x=_tree.where(nonfinite, s.x, x),
            v=y,
            v_old=s.v,
            w=w,
            w_old=s.w,
            beta=beta,
            beta_old=s.beta,
            dbar=dbar,
            epsilon=epsilon,
            phibar=jnp.where(nonfinite, s.phibar, sn * s.phibar),
            cs=cs,
            sn=sn,
            steps=s.steps + 1,
            nonfinite=nonfinite,
        )

    s = lax.while_loop(keep_going, step, start)
    status = _end(s.nonfinite, jnp.asarray(False), s.phibar <= target)
    return Outcome(s.x, status, s.steps, s.steps + products)
