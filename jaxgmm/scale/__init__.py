"""Data that does not sit on the device: exact EM over host arrays and memmapped
``.npy`` files fed block by block, and online (stepwise) EM over streams."""

from jaxgmm.scale.online import (
    OnlineEMInfo,
    OnlineEMState,
    fit_em_online,
    online_em_init,
    online_em_step,
)
from jaxgmm.scale.out_of_core import fit_em_out_of_core, moments_from_host

__all__ = [
    "OnlineEMInfo",
    "OnlineEMState",
    "fit_em_online",
    "fit_em_out_of_core",
    "moments_from_host",
    "online_em_init",
    "online_em_step",
]
