"""AdaHessian (Yao, Gholami, Shen, Mustafa, Keutzer and Mahoney, 2021, "ADAHESSIAN: An
Adaptive Second Order Optimizer for Machine Learning") as an optax transformation.

Adam with the squared gradient replaced by the squared Hessian diagonal. Per step ``t``
(counting from 1), with ``g`` the gradient given to ``update``:

* ``D = u * (H u)``, Hutchinson's estimate of the Hessian diagonal from one Rademacher probe
  ``u`` (``H`` the Hessian of ``obj_fn`` at the parameters);
* optionally ``D`` spatially averaged: over the spatial axes of every convolution kernel
  (eq. 9 of the paper, the mean of ``D`` over each output/input channel pair's kernel);
* ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) D * D``, both bias-corrected:
  ``m_hat = m / (1 - b1**t)``, ``v_hat = v / (1 - b2**t)``;
* the update is ``-lr (m_hat / (sqrt(v_hat)**k + eps) + weight_decay * params)``, ``k`` the
  Hessian power, the weight decay decoupled (as the authors' code applies it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._validate import check_choice
from ._common import (
    check_objective,
    check_params,
    check_real,
    check_schedule,
    hutchinson_sample,
    increment,
    initial_key,
    moment,
    optax,
    placed_like,
    split_key,
    tree_zeros_like,
)

# Kernel layouts: where the spatial axes of a convolution kernel are.
SPATIAL_LAYOUTS = ("OIHW", "HWIO")


class AdaHessianState(NamedTuple):
    """The state of :func:`scale_by_adahessian`.

    Attributes:
      count: the number of steps taken (int32).
      mu: ``m``, the exponential moving average of the gradients.
      nu: ``v``, the exponential moving average of the squared (spatially averaged)
        Hessian diagonal estimates.
      key: the PRNG key of the next step (split once per step).
    """

    count: jax.Array
    mu: Any
    nu: Any
    key: jax.Array


def scale_by_adahessian(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    *,
    spatial_averaging: str | None = None,
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdaHessian's preconditioning: ``m_hat / (sqrt(v_hat)**hessian_power + eps)``.

    The learning rate and weight decay are not applied (see :func:`adahessian`). Arguments as
    in :func:`adahessian`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`AdaHessianState`.
    """
    return _scale_by_adahessian(
        "scale_by_adahessian", b1, b2, eps, hessian_power, spatial_averaging, key
    )


def _scale_by_adahessian(
    fn_name: str,
    b1: float,
    b2: float,
    eps: float,
    hessian_power: float,
    spatial_averaging: str | None,
    key: jax.Array | None,
) -> optax.GradientTransformationExtraArgs:
    """:func:`scale_by_adahessian`, its errors naming ``fn_name`` (the function called)."""
    b1 = check_real(b1, "b1", fn_name, low=0.0, high=1.0, high_open=True)
    b2 = check_real(b2, "b2", fn_name, low=0.0, high=1.0, high_open=True)
    eps = check_real(eps, "eps", fn_name, low=0.0)
    power = check_real(hessian_power, "hessian_power", fn_name, low=0.0, high=1.0)
    if spatial_averaging is not None:
        spatial_averaging = check_choice(
            spatial_averaging, "spatial_averaging", SPATIAL_LAYOUTS, fn_name
        )
    first_key = initial_key(key, fn_name)

    def init_fn(params: Any) -> AdaHessianState:
        count, zeros = jnp.zeros([], jnp.int32), tree_zeros_like(params)
        state = AdaHessianState(count, zeros, tree_zeros_like(params), first_key)
        return placed_like(params, state)

    def update_fn(
        updates: Any,
        state: AdaHessianState,
        params: Any = None,
        *,
        obj_fn: Callable | None = None,
        **extra_args: Any,
    ) -> tuple[Any, AdaHessianState]:
        del extra_args  # meant for other transformations of a chain
        check_params(params, fn_name)
        obj_fn = check_objective(obj_fn, params, fn_name)
        next_key, step_key = split_key(state.key)
        diagonal = hutchinson_sample(obj_fn, params, step_key)
        if spatial_averaging is not None:
            diagonal = jax.tree_util.tree_map(
                lambda d: average_spatially(d, spatial_averaging), diagonal
            )
        count = increment(state.count)
        mu = moment(state.mu, updates, b1)
        nu = moment(state.nu, jax.tree_util.tree_map(jnp.square, diagonal), b2)

        def precondition(m: jax.Array, v: jax.Array) -> jax.Array:
            m_hat = m / (1 - jnp.asarray(b1, m.dtype) ** count)
            v_hat = v / (1 - jnp.asarray(b2, v.dtype) ** count)
            return (m_hat / (jnp.sqrt(v_hat) ** power + eps)).astype(m.dtype)

        updates = jax.tree_util.tree_map(precondition, mu, nu)
        return updates, AdaHessianState(count, mu, nu, next_key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adahessian(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    hessian_power: float = 1.0,
    *,
    spatial_averaging: str | None = None,
    weight_decay_mask: Any = None,
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdaHessian, Adam with the Hessian diagonal in place of the squared gradient
    (Yao et al., 2021).

    Each step estimates the Hessian diagonal ``D`` of ``obj_fn`` from one Rademacher probe
    (Hutchinson), keeps bias-corrected moving averages ``m_hat`` of the gradients and
    ``v_hat`` of ``D * D``, and steps by
    ``-learning_rate * (m_hat / (sqrt(v_hat)**hessian_power + eps) + weight_decay * params)``.

    ``update`` takes the step's scalar loss as an extra argument, as
    ``optax.contrib.sophia`` does: ``update(grads, state, params, obj_fn=lambda p: loss(p,
    batch))``; give a new closure each step for a new batch. Cost per step: the gradient the
    caller computes plus one Hessian-vector product of ``obj_fn`` through
    :func:`jaxhvp.hessian_operator` (about two to three gradients more).

    Args:
      learning_rate: a number or an optax schedule (the paper uses 0.15 for image
        classification).
      b1: the decay of the gradients' moving average, in ``[0, 1)``.
      b2: the decay of the squared diagonal's moving average, in ``[0, 1)``.
      eps: added to the denominator, ``>= 0``.
      weight_decay: decoupled weight decay (a number or a schedule).
      hessian_power: ``k`` in ``[0, 1]``: ``1`` divides by the (root-mean-square) curvature,
        ``0`` gives momentum SGD.
      spatial_averaging: ``None`` (default) or the layout of the convolution kernels:
        ``"OIHW"`` (spatial axes after the first two: ``equinox.nn.Conv``, PyTorch,
        ``jax.lax.conv``'s default) or ``"HWIO"`` (all but the last two:
        ``flax.linen.Conv``). Every parameter with 3 or more axes is then treated as a
        kernel and its estimate averaged over the spatial axes; vectors and matrices are
        not changed. Mask other such parameters out with ``optax.partition``.
      weight_decay_mask: as ``mask`` of ``optax.add_decayed_weights``.
      key: the PRNG key of the probes, carried in the state and split every step; default
        ``jax.random.key(0)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``: ``optax.chain`` of
      :func:`scale_by_adahessian`, ``optax.add_decayed_weights`` and
      ``optax.scale_by_learning_rate``.

    Raises:
      HVPError: a hyperparameter out of range or an unknown ``spatial_averaging``.
      TypeError: a ``key`` that is not one PRNG key; at ``update``, a missing ``params`` or
        ``obj_fn``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxhvp.optax
      >>> def loss(p):
      ...     return jnp.sum(jnp.array([1.0, 10.0]) * p**2)
      >>> opt = jaxhvp.optax.adahessian(0.5, key=jax.random.key(0))
      >>> params = jnp.array([1.0, -2.0])
      >>> state = opt.init(params)
      >>> updates, state = opt.update(jax.grad(loss)(params), state, params, obj_fn=loss)
      >>> updates.round(4)  # the first step is lr * g / |D|: a Newton step scaled by lr
      Array([-0.5,  1. ], dtype=float32)
    """
    fn_name = "adahessian"
    learning_rate = check_schedule(learning_rate, "learning_rate", fn_name)
    weight_decay = check_schedule(weight_decay, "weight_decay", fn_name)
    return optax.chain(
        _scale_by_adahessian(fn_name, b1, b2, eps, hessian_power, spatial_averaging, key),
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def average_spatially(d: jax.Array, layout: str) -> jax.Array:
    """``d`` averaged over the spatial axes of a kernel in ``layout``; unchanged for fewer
    than 3 axes."""
    if d.ndim < 3:
        return d
    axes = tuple(range(2, d.ndim)) if layout == "OIHW" else tuple(range(d.ndim - 2))
    return jnp.broadcast_to(jnp.mean(d, axis=axes, keepdims=True), d.shape)
