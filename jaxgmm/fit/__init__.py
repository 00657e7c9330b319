"""Fitting machinery shared by every algorithm: the `Fitter` seam, the one driver that
runs it (`run_fitter`), what a fit returns, and input validation."""

from jaxgmm.fit.driver import run_fitter
from jaxgmm.fit.fitter import Fitter
from jaxgmm.fit.results import Degeneracy, FitResult, RestartSummary, Trace, component_diagnostics

__all__ = [
    "Degeneracy",
    "FitResult",
    "Fitter",
    "RestartSummary",
    "Trace",
    "component_diagnostics",
    "run_fitter",
]
