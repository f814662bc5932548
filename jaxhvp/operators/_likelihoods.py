"""The likelihoods of the Fisher operators, in output space: closed-form Fisher products and
sampled gradients of the negative log-likelihood.

Each is named by the loss it is the negative log-likelihood of (up to a constant), with the
mean that loss takes as ``jnp.mean`` would (so ``reduction="mean"`` matches it):

* ``"categorical"``: softmax cross-entropy on logits, classes on the last axis; one term per
  position of the other axes (``optax.softmax_cross_entropy_with_integer_labels(f, y)``).
* ``"gaussian"``: squared error ``(f - y)**2`` per element, a Gaussian of variance 1/2
  (``jnp.mean((f - y)**2)``).
* ``"bernoulli"``: sigmoid cross-entropy on logits per element
  (``optax.sigmoid_binary_cross_entropy(f, y)``).

Rows: a Monte Carlo sample's gradient is outer-multiplied per row, the last axis of ``f``
(for ``"gaussian"`` and ``"bernoulli"`` outputs of one dimension or none, per element).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from .._errors import HVPError

NAMES = ("categorical", "gaussian", "bernoulli")


@dataclasses.dataclass(frozen=True)
class Likelihood:
    name: str

    def terms(self, f: jax.Array) -> int:
        """How many terms the matching loss averages over with ``reduction="mean"``."""
        if self.name == "categorical":
            return math.prod(f.shape[:-1])
        return math.prod(f.shape)

    def rows(self, x: jax.Array) -> jax.Array:
        """``x`` as ``(rows, event)``: the groups a sampled gradient is outer-multiplied in."""
        if self.name != "categorical" and x.ndim <= 1:
            return x.reshape(-1, 1)
        return x.reshape(-1, x.shape[-1])

    def fisher(self, f: jax.Array, u: jax.Array) -> jax.Array:
        """``F(f) u`` in output space: the expected Hessian of the loss in ``f``, per term."""
        if self.name == "categorical":
            p = jax.nn.softmax(f, axis=-1)
            return p * u - p * jnp.sum(p * u, axis=-1, keepdims=True)
        if self.name == "gaussian":
            return 2 * u
        s = jax.nn.sigmoid(f)
        return s * (1 - s) * u

    def sampled_gradients(self, key: jax.Array, f: jax.Array, samples: int) -> jax.Array:
        """``(samples, *f.shape)``: ``grad_f loss(f, y~)`` with labels ``y~`` drawn from the
        model's own predictive distribution at ``f``."""
        if self.name == "categorical":
            labels = jax.random.categorical(key, f, axis=-1, shape=(samples, *f.shape[:-1]))
            onehot = jax.nn.one_hot(labels, f.shape[-1], dtype=f.dtype)
            return jax.nn.softmax(f, axis=-1) - onehot
        if self.name == "gaussian":  # y~ = f + e / sqrt(2): grad = 2 (f - y~) = -sqrt(2) e
            return math.sqrt(2) * jax.random.normal(key, (samples, *f.shape), f.dtype)
        s = jax.nn.sigmoid(f)
        labels = jax.random.bernoulli(key, s, (samples, *f.shape)).astype(f.dtype)
        return s - labels


def as_likelihood(name: object, fn_name: str) -> Likelihood:
    if isinstance(name, str) and name in NAMES:
        return Likelihood(name)
    choices = ", ".join(repr(n) for n in NAMES)
    msg = f"likelihood given to {fn_name} must be one of {choices}, but got {name!r}."
    raise HVPError(msg)


def check_output(f: object, likelihood: Likelihood, fn_name: str) -> None:
    """The model's output must be one floating array; categorical needs a class axis."""
    if not isinstance(f, jax.Array) or not jnp.issubdtype(f.dtype, jnp.floating):
        msg = (
            f"With likelihood={likelihood.name!r}, the func given to {fn_name} must return one "
            f"floating array (logits or means), but it returned {_describe(f)}."
        )
        raise HVPError(msg)
    if likelihood.name == "categorical" and f.ndim < 1:
        msg = (
            f"With likelihood='categorical', the func given to {fn_name} must return logits "
            "with the classes on the last axis, shape (..., num_classes), but it returned a "
            "scalar."
        )
        raise HVPError(msg)


def _describe(value: object) -> str:
    if isinstance(value, jax.Array):
        return f"an array of dtype {value.dtype}"
    return f"a {type(value).__name__}"
