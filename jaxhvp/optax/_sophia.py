"""Sophia (Liu, Li, Hall, Liang and Ma, 2023, "Sophia: A Scalable Stochastic Second-order
Optimizer for Language Model Pre-training", Algorithms 1 to 3) as an optax transformation.

Per step ``t`` (counting from 0), with ``g`` the gradient given to ``update``:

* ``m <- b1 m + (1 - b1) g`` (no bias correction, as in the paper);
* every ``update_interval`` steps (``t = 0, k, 2k, ...``): ``h <- b2 h + (1 - b2) h_hat``, with
  ``h_hat`` an estimate of the diagonal of the curvature, computed only on those steps
  (``lax.cond``); ``h`` starts at 0;
* the update is ``-lr (clip(m / max(gamma h, eps), -1, 1) + weight_decay * params)``, the
  decay decoupled (applied to the parameters before the step, as the paper writes it).

Estimators of ``h_hat``:

* ``"hutchinson"`` (Sophia-H): ``u * (H u)`` with one Rademacher probe ``u`` and ``H`` the
  Hessian of ``obj_fn`` (the paper's Algorithm 1; it draws Gaussian probes, Rademacher ones
  have the same mean and a smaller variance);
* ``"gauss-newton-bartlett"`` (Sophia-G, Algorithm 2): labels ``y_hat`` sampled from the
  model's own predictive distribution at ``model_fn(params)``, ``g_hat`` the gradient of the
  mean loss at those labels, and ``h_hat = B * g_hat * g_hat`` with ``B`` the number of terms
  the mean averages. Its expectation is the diagonal of the Gauss-Newton matrix (equal to the
  Fisher) of the mean loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._errors import HVPError
from .._validate import check_choice, check_count
from ..operators._likelihoods import Likelihood, as_likelihood
from ._common import (
    check_extra_fn,
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

ESTIMATORS = ("hutchinson", "gauss-newton-bartlett")


class SophiaState(NamedTuple):
    """The state of :func:`scale_by_sophia`.

    Attributes:
      count: the number of steps taken (int32).
      mu: ``m``, the exponential moving average of the gradients.
      nu: ``h``, the exponential moving average of the diagonal estimates (updated every
        ``update_interval`` steps).
      key: the PRNG key of the next step (split once per step).
    """

    count: jax.Array
    mu: Any
    nu: Any
    key: jax.Array


def scale_by_sophia(
    b1: float = 0.965,
    b2: float = 0.99,
    gamma: float = 0.01,
    eps: float = 1e-12,
    update_interval: int = 10,
    *,
    estimator: str = "hutchinson",
    likelihood: str = "categorical",
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Sophia's preconditioning: ``clip(m / max(gamma * h, eps), -1, 1)``.

    The learning rate and weight decay are not applied (see :func:`sophia`). Arguments as in
    :func:`sophia`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`SophiaState`.
    """
    return _scale_by_sophia(
        "scale_by_sophia", b1, b2, gamma, eps, update_interval, estimator, likelihood, key
    )


def _scale_by_sophia(
    fn_name: str,
    b1: float,
    b2: float,
    gamma: float,
    eps: float,
    update_interval: int,
    estimator: str,
    likelihood: str,
    key: jax.Array | None,
) -> optax.GradientTransformationExtraArgs:
    """:func:`scale_by_sophia`, its errors naming ``fn_name`` (the function called)."""
    b1 = check_real(b1, "b1", fn_name, low=0.0, high=1.0, high_open=True)
    b2 = check_real(b2, "b2", fn_name, low=0.0, high=1.0, high_open=True)
    gamma = check_real(gamma, "gamma", fn_name, low=0.0, low_open=True)
    eps = check_real(eps, "eps", fn_name, low=0.0, low_open=True)
    update_interval = check_interval(update_interval, fn_name)
    estimator = check_choice(estimator, "estimator", ESTIMATORS, fn_name)
    law = as_likelihood(likelihood, fn_name)
    first_key = initial_key(key, fn_name)

    def init_fn(params: Any) -> SophiaState:
        count, zeros = jnp.zeros([], jnp.int32), tree_zeros_like(params)
        state = SophiaState(count, zeros, tree_zeros_like(params), first_key)
        return placed_like(params, state)

    def update_fn(
        updates: Any,
        state: SophiaState,
        params: Any = None,
        *,
        obj_fn: Callable | None = None,
        model_fn: Callable | None = None,
        **extra_args: Any,
    ) -> tuple[Any, SophiaState]:
        del extra_args  # meant for other transformations of a chain
        check_params(params, fn_name)
        if estimator == "hutchinson":
            obj_fn = check_objective(obj_fn, params, fn_name)
            sample = functools.partial(hutchinson_sample, obj_fn, params)
        else:
            model_fn = check_model(model_fn, params, law, fn_name)
            sample = functools.partial(gauss_newton_bartlett_sample, law, model_fn, params)
        next_key, step_key = split_key(state.key)
        mu = moment(state.mu, updates, b1)
        nu = lax.cond(
            state.count % update_interval == 0,
            lambda: moment(state.nu, sample(step_key), b2),
            lambda: state.nu,
        )
        updates = jax.tree_util.tree_map(
            lambda m, h: jnp.clip(m / jnp.maximum(gamma * h, eps), -1, 1).astype(m.dtype), mu, nu
        )
        return updates, SophiaState(increment(state.count), mu, nu, next_key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sophia(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.965,
    b2: float = 0.99,
    gamma: float = 0.01,
    eps: float = 1e-12,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    update_interval: int = 10,
    *,
    estimator: str = "hutchinson",
    likelihood: str = "categorical",
    weight_decay_mask: Any = None,
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Sophia, the clipped diagonal second-order optimizer of Liu et al. (2023).

    ``m`` is the moving average of the gradients, ``h`` that of a diagonal curvature
    estimate refreshed every ``update_interval`` steps, and each step is
    ``-learning_rate * (clip(m / max(gamma * h, eps), -1, 1) + weight_decay * params)``: a
    Newton-like step ``m / h`` scaled by ``1 / gamma`` where the curvature is large, and a
    sign-momentum step of size ``learning_rate`` where it is small or negative.

    ``update`` takes the step's objective as an extra argument, as
    ``optax.contrib.sophia`` does; give a new closure each step for a new batch:

    * ``estimator="hutchinson"``: ``update(grads, state, params, obj_fn=lambda p: loss(p,
      batch))``, the scalar loss. On estimate steps: one Hessian-vector product of
      ``obj_fn`` through :func:`jaxhvp.hessian_operator` (about two to three gradients).
    * ``estimator="gauss-newton-bartlett"``: ``update(grads, state, params, model_fn=lambda
      p: model(p, batch.x))``, the model's outputs (logits for ``"categorical"``) whose
      negative log-likelihood under ``likelihood`` is the loss; the data's labels are not
      used. On estimate steps: one forward pass and one vjp (about one gradient).

    Other steps cost nothing beyond the gradient the caller computes.

    Args:
      learning_rate: a number or an optax schedule.
      b1: the decay of the gradients' moving average ``m``, in ``[0, 1)``.
      b2: the decay of the curvature's moving average ``h``, in ``[0, 1)``; it is applied once
        per estimate, so the effective decay per step is about ``1 - (1 - b2) /
        update_interval``.
      gamma: ``rho`` in the paper (``gamma`` in its Algorithm 3): the step is ``m / (gamma h)``
        before clipping, so ``learning_rate / gamma`` is the fraction of a Newton step taken
        where nothing is clipped. Positive.
      eps: the floor of the denominator, positive; where ``gamma * h <= eps`` (small or
        negative curvature) the step is ``learning_rate * sign(m)``.
      weight_decay: decoupled weight decay (a number or a schedule).
      update_interval: ``k``: the curvature is estimated on steps ``0, k, 2k, ...`` (an int,
        or an integer array under ``optax.inject_hyperparams``).
      estimator: ``"hutchinson"`` or ``"gauss-newton-bartlett"``.
      likelihood: for ``"gauss-newton-bartlett"``: ``"categorical"`` (softmax cross-entropy
        on logits, classes on the last axis), ``"gaussian"`` (squared error ``(f - y)**2``)
        or ``"bernoulli"`` (sigmoid cross-entropy on logits); ``B`` is then the number of
        rows of the logits (all axes but the last) or the number of outputs.
      weight_decay_mask: as ``mask`` of ``optax.add_decayed_weights``.
      key: the PRNG key of the probes or sampled labels, carried in the state and split
        every step; default ``jax.random.key(0)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``: ``optax.chain`` of
      :func:`scale_by_sophia`, ``optax.add_decayed_weights`` and
      ``optax.scale_by_learning_rate``.

    Raises:
      HVPError: a hyperparameter out of range or an unknown ``estimator`` or ``likelihood``.
      TypeError: a ``key`` that is not one PRNG key; at ``update``, a missing ``params``,
        ``obj_fn`` or ``model_fn``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxhvp.optax
      >>> def loss(p):
      ...     return jnp.sum(jnp.array([1.0, 10.0]) * p**2)
      >>> opt = jaxhvp.optax.sophia(0.1, weight_decay=0.0, key=jax.random.key(0))
      >>> params = jnp.array([1.0, -2.0])
      >>> state = opt.init(params)
      >>> updates, state = opt.update(jax.grad(loss)(params), state, params, obj_fn=loss)
      >>> updates  # clipped: at most the learning rate per coordinate
      Array([-0.1,  0.1], dtype=float32)
    """
    fn_name = "sophia"
    learning_rate = check_schedule(learning_rate, "learning_rate", fn_name)
    weight_decay = check_schedule(weight_decay, "weight_decay", fn_name)
    return optax.chain(
        _scale_by_sophia(fn_name, b1, b2, gamma, eps, update_interval, estimator, likelihood, key),
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def check_interval(value: Any, fn_name: str) -> Any:
    """An int >= 1, or an integer scalar array (``optax.inject_hyperparams`` passes arrays;
    a traced one cannot be checked)."""
    integer_scalar = (
        isinstance(value, (jax.Array, np.ndarray))
        and np.ndim(value) == 0
        and jnp.issubdtype(value.dtype, jnp.integer)
    )
    if integer_scalar and isinstance(value, jax.core.Tracer):
        return value
    return check_count(int(value) if integer_scalar else value, "update_interval", fn_name)


# --- the Gauss-Newton-Bartlett estimator ------------------------------------------------------


def check_model(model_fn: Any, params: Any, law: Likelihood, fn_name: str) -> Callable:
    """``model_fn`` given, callable, and returning one floating array the likelihood fits."""
    example = "lambda p: model(p, batch_inputs)"
    model_fn = check_extra_fn(model_fn, "model_fn", fn_name, example)
    out = jax.eval_shape(model_fn, params)
    ok = isinstance(out, jax.ShapeDtypeStruct) and jnp.issubdtype(out.dtype, jnp.floating)
    if not ok or (law.name == "categorical" and len(out.shape) < 1):
        given = (
            f"an array of shape {out.shape} and dtype {out.dtype}"
            if isinstance(out, jax.ShapeDtypeStruct)
            else f"a {type(out).__name__}"
        )
        msg = (
            f"model_fn given to {fn_name}'s update must return the model's outputs as one "
            f"floating array (for likelihood={law.name!r}: "
            f"{_OUTPUTS[law.name]}), but it returned {given}."
        )
        raise HVPError(msg)
    return model_fn


_OUTPUTS = {
    "categorical": "logits with the classes on the last axis, shape (..., num_classes)",
    "gaussian": "the predicted means",
    "bernoulli": "logits, one per binary label",
}


def gauss_newton_bartlett_sample(
    law: Likelihood, model_fn: Callable, params: Any, key: jax.Array
) -> Any:
    """``B * g_hat * g_hat``: ``g_hat`` the gradient of the mean negative log-likelihood at
    labels drawn from the model's predictive distribution, ``B`` the number of terms.

    ``g_hat = J^T r / B`` with ``r`` the output-space gradients at the sampled labels (one
    forward pass and one vjp). Its expectation is ``diag(sum_b J_b^T F_b J_b) / B``, the
    Gauss-Newton diagonal of the mean loss (``F_b`` the output-space Fisher of term ``b``).
    """
    outputs, vjp = jax.vjp(model_fn, params)
    terms = law.terms(outputs)
    residuals = law.sampled_gradients(key, outputs, 1)[0]
    (g_hat,) = vjp((residuals / terms).astype(outputs.dtype))
    return jax.tree_util.tree_map(lambda g: (terms * g * g).astype(g.dtype), g_hat)
