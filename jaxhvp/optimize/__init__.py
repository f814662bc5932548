"""``jaxhvp.optimize``: scipy's Newton-CG and trust-ncg as compiled JAX loops, and one-step
curvature updates for training loops.

Layout: ``_minimize`` (the public entry point) -> ``_loop`` (the one loop, the solver
protocol) -> ``_newton_cg``, ``_trust_ncg`` (the solvers) -> ``_line_search`` and
``_zoom_search`` (scipy's two Wolfe searches), ``_krylov`` (truncated and Steihaug CG) ->
``_problem`` (the objective on flat vectors, the argument checks). ``_steps`` holds the
training-loop steps, ``_result`` the status codes and result types, ``_callback`` the host
side of ``callback=``.

Adding a solver (say trust-krylov, or Newton with a user operator) is one new module: a class
with ``NAME``, ``TOL_OPTION``, ``OPTIONS`` and ``configure``/``init``/``step``/``result``
(the protocol in ``_loop``), whose ``step`` takes its products from ``problem.linearize``
and ends each counted iteration with ``iteration.end``; then one entry in
``_minimize._SOLVERS``.
"""

from ._minimize import minimize as minimize
from ._result import IntermediateResult as IntermediateResult
from ._result import MinimizeResult as MinimizeResult
from ._result import MinimizeStatus as MinimizeStatus
from ._result import StepInfo as StepInfo
from ._result import minimize_message as minimize_message
from ._steps import NewtonCGState as NewtonCGState
from ._steps import TrustNCGState as TrustNCGState
from ._steps import newton_cg_init as newton_cg_init
from ._steps import newton_cg_step as newton_cg_step
from ._steps import trust_ncg_init as trust_ncg_init
from ._steps import trust_ncg_step as trust_ncg_step

__all__ = [
    "IntermediateResult",
    "MinimizeResult",
    "MinimizeStatus",
    "NewtonCGState",
    "StepInfo",
    "TrustNCGState",
    "minimize",
    "minimize_message",
    "newton_cg_init",
    "newton_cg_step",
    "trust_ncg_init",
    "trust_ncg_step",
]

for _name in __all__:
    globals()[_name].__module__ = "jaxhvp.optimize"
del _name
