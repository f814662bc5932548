"""What :func:`jaxhvp.solve` reports: a status code per solve, and its words."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import jax

from .._status import message_for


class SolveStatus(enum.IntEnum):
    """How a solve ended: the ``status`` of a :class:`SolveInfo`.

    Set inside the compiled loop (strings cannot live there); :func:`solve_message` gives
    the words.
    """

    SUCCESS = 0
    NOT_CONVERGED = 1
    NONFINITE = 2
    INDEFINITE = 3


_MESSAGES = {
    SolveStatus.SUCCESS: "The residual is within the tolerance.",
    SolveStatus.NOT_CONVERGED: (
        "The residual is above the tolerance after the method's iterations (cg, minres: "
        "maxiter; lissa: depth; lowrank: the rank-k approximation). Raise maxiter, depth or "
        "rank, add damping, or use a preconditioner."
    ),
    SolveStatus.NONFINITE: "NaN or Inf appeared in a product or in the iterates.",
    SolveStatus.INDEFINITE: (
        "CG met a direction of zero or negative curvature: the damped operator is not "
        "positive definite. Raise damping or use method='minres'."
    ),
}


def solve_message(status: Any) -> Any:
    """The words for a status code of :func:`jaxhvp.solve` (outside ``jax.jit``).

    Args:
      status: a status code: a Python int, or a concrete integer array (a numpy array of
        messages of its shape comes back).

    Examples:
      >>> import jaxhvp
      >>> jaxhvp.linalg.solve_message(0)
      'The residual is within the tolerance.'
    """
    return message_for(status, _MESSAGES, "solve_message")


class SolveInfo(NamedTuple):
    """How a solve went; a pytree (it crosses ``jax.jit`` and ``jax.vmap``).

    Attributes:
      status: a :class:`SolveStatus` code, as an int array.
      residual: the relative residual ``||b - (A + damping I) x|| / ||b||`` of the returned
        ``x``, computed with one extra product (not the method's own estimate).
      iterations: the method's iterations (cg, minres: Krylov steps; lissa: series terms;
        lowrank: the Lanczos products of the eigensolve).
      num_matvecs: every product computed, the residual check included.
    """

    status: jax.Array
    residual: jax.Array
    iterations: jax.Array
    num_matvecs: jax.Array

    @property
    def success(self) -> jax.Array:
        return self.status == SolveStatus.SUCCESS

    @property
    def message(self) -> Any:
        """The words for ``status`` (outside ``jax.jit``); see :func:`solve_message`."""
        return solve_message(self.status)
