"""Fitting machinery shared by every algorithm: the `Fitter` seam, the one driver that
runs it (`run_fitter`), what a fit returns, and input validation."""

from jaxgmm.fit.driver import RunState, run_fitter
from jaxgmm.fit.fitter import DriverHooks, Fitter, step_data
from jaxgmm.fit.results import Degeneracy, FitResult, RestartSummary, Trace, component_diagnostics

__all__ = [
    "Degeneracy",
    "DriverHooks",
    "FitResult",
    "Fitter",
    "RestartSummary",
    "RunState",
    "Trace",
    "component_diagnostics",
    "run_fitter",
    "step_data",
]
