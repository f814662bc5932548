"""Inverse curvature products: ``(A + damping I)^-1 b`` for any jaxhvp operator.

:func:`solve` (also ``jaxhvp.solve``) with conjugate gradients (optionally preconditioned:
:func:`diagonal_preconditioner`, :func:`nystrom_preconditioner`), MINRES, LiSSA or a
low-rank eigenspace inverse; every method returns ``(x, SolveInfo)`` with a status code.
"""

from ._preconditioners import DiagonalPreconditioner as DiagonalPreconditioner
from ._preconditioners import NystromPreconditioner as NystromPreconditioner
from ._preconditioners import Preconditioner as Preconditioner
from ._preconditioners import diagonal_preconditioner as diagonal_preconditioner
from ._preconditioners import nystrom_preconditioner as nystrom_preconditioner
from ._result import SolveInfo as SolveInfo
from ._result import SolveStatus as SolveStatus
from ._result import solve_message as solve_message
from ._solve import METHODS as METHODS
from ._solve import solve as solve

__all__ = [
    "METHODS",
    "DiagonalPreconditioner",
    "NystromPreconditioner",
    "Preconditioner",
    "SolveInfo",
    "SolveStatus",
    "diagonal_preconditioner",
    "nystrom_preconditioner",
    "solve",
    "solve_message",
]

for _name in __all__[1:]:
    globals()[_name].__module__ = "jaxhvp.linalg"
