"""What the solvers report: status codes and their messages, and the result types."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._status import message_for


class MinimizeStatus(enum.IntEnum):
    """Why a solve stopped: the ``status`` of a :class:`MinimizeResult`.

    Codes are set inside the compiled loop, where strings cannot live;
    :func:`minimize_message` turns them into words. ``CALLBACK_STOPPED`` is scipy's 99.
    """

    SUCCESS = 0
    MAX_ITERATIONS = 1
    LINE_SEARCH_FAILED = 2
    NONFINITE = 3
    CG_NOT_CONVERGED = 4
    NO_PREDICTED_DECREASE = 5
    CALLBACK_STOPPED = 99


RUNNING = -1  # the status inside the loop until one of the codes above is set


def running() -> jax.Array:
    """``RUNNING`` as the int32 array every status chain starts from (never weakly typed)."""
    return jnp.asarray(RUNNING, jnp.int32)


_MESSAGES = {
    MinimizeStatus.SUCCESS: "Optimization terminated successfully.",
    MinimizeStatus.MAX_ITERATIONS: "Maximum number of iterations has been exceeded.",
    MinimizeStatus.LINE_SEARCH_FAILED: (
        "Desired error not necessarily achieved due to precision loss: the Wolfe line searches "
        "found no acceptable step length."
    ),
    MinimizeStatus.NONFINITE: (
        "NaN or Inf encountered in the objective, its gradient or a Hessian product."
    ),
    MinimizeStatus.CG_NOT_CONVERGED: (
        "CG iterations didn't converge. The Hessian is not positive definite."
    ),
    MinimizeStatus.NO_PREDICTED_DECREASE: (
        "A bad approximation caused failure to predict improvement."
    ),
    MinimizeStatus.CALLBACK_STOPPED: "`callback` raised `StopIteration`.",
}


def minimize_message(status: Any) -> Any:
    """The message for a status code of :func:`minimize`, as scipy's ``result.message``.

    Args:
      status: a status code (``result.status``): a Python int or a concrete integer array.
        For an array (results of a ``jax.vmap``), a numpy array of messages of its shape.

    Returns:
      A ``str``, or a numpy array of ``str`` for an array of codes.

    Raises:
      HVPError: an unknown code.
      TypeError: ``status`` is a tracer (inside ``jax.jit``): read messages outside it.

    Examples:
      >>> import jaxhvp
      >>> jaxhvp.minimize_message(1)
      'Maximum number of iterations has been exceeded.'
    """
    return message_for(status, _MESSAGES, "minimize_message")


class MinimizeResult(NamedTuple):
    """What :func:`minimize` returns: a pytree, so it crosses ``jax.jit`` and ``jax.vmap``.

    Attributes:
      x: the solution, with the structure, shapes and dtypes of ``x0``.
      fun: the objective at ``x``.
      jac: the gradient at ``x``, with the structure of ``x0``.
      nit: the number of iterations (scipy counts the same way).
      nfev: the number of objective evaluations.
      njev: the number of gradient evaluations (a line-search trial counts one, as in scipy).
      nhev: the number of Hessian-vector products computed.
      success: whether ``status`` is ``MinimizeStatus.SUCCESS``.
      status: a :class:`MinimizeStatus` code, as an int array.
    """

    x: Any
    fun: jax.Array
    jac: Any
    nit: jax.Array
    nfev: jax.Array
    njev: jax.Array
    nhev: jax.Array
    success: jax.Array
    status: jax.Array

    @property
    def message(self) -> Any:
        """The words for ``status`` (outside ``jax.jit`` only); see :func:`minimize_message`."""
        return minimize_message(self.status)


class IntermediateResult(NamedTuple):
    """What ``minimize(callback=...)`` receives after each iteration (scipy's
    ``intermediate_result``): concrete arrays, on the host.

    Attributes:
      x: the current point, with the structure of ``x0``.
      fun: the objective there.
      nit: the iterations made so far.
    """

    x: Any
    fun: Any
    nit: Any


class StepInfo(NamedTuple):
    """What one training step (``newton_cg_step``, ``trust_ncg_step``) reports; a pytree.

    Attributes:
      fun: the objective at the parameters before the step, on this step's data.
      ratio: actual over predicted reduction of the step (``-inf`` when the trial value is
        NaN or Inf, or when the step could not be computed; ``nan`` when the quadratic model
        predicts no decrease, i.e. the parameters are stationary on this data).
      accepted: whether the parameters were moved.
      converged: whether the model predicted no decrease: nothing is left to gain on this
        data, and the state was left as it was.
      nhev: the number of Hessian-vector products computed.
    """

    fun: jax.Array
    ratio: jax.Array
    accepted: jax.Array
    converged: jax.Array
    nhev: jax.Array
