"""Second-order optax transformations: Hessian-free, Sophia and AdaHessian.

Each is an ``optax.GradientTransformationExtraArgs``: ``update`` takes the step's objective
(``obj_fn=``, or ``model_fn=`` for Sophia's Gauss-Newton-Bartlett estimator) as an extra
argument, which ``optax.chain`` passes on. Needs ``pip install optax``.
"""

from ._adahessian import AdaHessianState as AdaHessianState
from ._adahessian import adahessian as adahessian
from ._adahessian import scale_by_adahessian as scale_by_adahessian
from ._hessian_free import HessianFreeState as HessianFreeState
from ._hessian_free import hessian_free as hessian_free
from ._sophia import SophiaState as SophiaState
from ._sophia import scale_by_sophia as scale_by_sophia
from ._sophia import sophia as sophia

__all__ = [
    "AdaHessianState",
    "HessianFreeState",
    "SophiaState",
    "adahessian",
    "hessian_free",
    "scale_by_adahessian",
    "scale_by_sophia",
    "sophia",
]
