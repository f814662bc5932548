"""Hessian spectra: extreme eigenvalues, trace and spectral density, over data batches.

Every estimator takes a :class:`jaxhvp.HessianOperator` (from :func:`jaxhvp.hessian_operator`,
:func:`batch_hessian_operator` or :func:`block_operator`) or any symmetric ``matvec(v)``
over a pytree with ``like=``, and a PRNG ``key``; each runs as one compiled kernel and
returns a small pytree of results. ``trace`` with ``method="hutchinson"`` or ``"xtrace"``
needs the optional dependency ``matfree`` (``pip install 'jaxhvp[spectrum]'``).
"""

from ._batched import batch_hessian_operator as batch_hessian_operator
from ._blocks import block_operator as block_operator
from ._density import Density as Density
from ._density import density as density
from ._eigen import Eigen as Eigen
from ._eigen import eigenvalues as eigenvalues
from ._trace import TraceEstimate as TraceEstimate
from ._trace import trace as trace

__all__ = [
    "Density",
    "Eigen",
    "TraceEstimate",
    "batch_hessian_operator",
    "block_operator",
    "density",
    "eigenvalues",
    "trace",
]
