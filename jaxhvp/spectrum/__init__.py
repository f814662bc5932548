"""Curvature spectra: extreme eigenvalues, trace, diagonal and spectral density.

Every estimator takes any :class:`jaxhvp.Operator` (Hessian, GGN, Fisher, empirical Fisher,
batch, block, and their damped, scaled and summed combinations) or any symmetric
``matvec(v)`` over a pytree with ``like=``, and a PRNG ``key``; each runs as one compiled
kernel and returns a small pytree of results. ``trace`` with ``method="hutchinson"`` or
``"xtrace"`` needs the optional dependency ``matfree`` (``pip install matfree``, or the
``spectrum`` extra from a clone).
"""

from ._batched import batch_hessian_operator as batch_hessian_operator
from ._blocks import block_operator as block_operator
from ._density import Density as Density
from ._density import density as density
from ._diagonal import DiagonalEstimate as DiagonalEstimate
from ._diagonal import diagonal as diagonal
from ._eigen import Eigen as Eigen
from ._eigen import eigenvalues as eigenvalues
from ._trace import TraceEstimate as TraceEstimate
from ._trace import trace as trace

__all__ = [
    "Density",
    "DiagonalEstimate",
    "Eigen",
    "TraceEstimate",
    "batch_hessian_operator",
    "block_operator",
    "density",
    "diagonal",
    "eigenvalues",
    "trace",
]
