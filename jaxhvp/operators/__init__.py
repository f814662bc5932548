"""Curvature operators: one interface (:class:`Operator`) for the Hessian, the generalized
Gauss-Newton, the Fisher and the empirical Fisher, and their damped, scaled and summed
combinations."""

from ._base import DampedOperator as DampedOperator
from ._base import Operator as Operator
from ._base import ScaledOperator as ScaledOperator
from ._base import SumOperator as SumOperator
from ._blocks import BlockOperator as BlockOperator
from ._ggn import GGNOperator as GGNOperator
from ._ggn import empirical_fisher_operator as empirical_fisher_operator
from ._ggn import fisher_operator as fisher_operator
from ._ggn import ggn_operator as ggn_operator
from ._ggn import gnvp as gnvp
from ._hessian import HessianOperator as HessianOperator
from ._hessian import hessian_operator as hessian_operator
from ._stream import Stream as Stream
from ._stream import StreamedOperator as StreamedOperator
from ._stream import stream as stream

__all__ = [
    "BlockOperator",
    "DampedOperator",
    "GGNOperator",
    "HessianOperator",
    "Operator",
    "ScaledOperator",
    "Stream",
    "StreamedOperator",
    "SumOperator",
    "empirical_fisher_operator",
    "fisher_operator",
    "ggn_operator",
    "gnvp",
    "hessian_operator",
    "stream",
]

for _name in __all__:
    globals()[_name].__module__ = "jaxhvp.operators"
del _name
