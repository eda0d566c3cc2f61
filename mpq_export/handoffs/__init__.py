"""Hand-offs (`--emit`): the quantized denoiser laid out where a runtime users run loads it.

One object per hand-off (handoffs/base.py); `get_handoff(name)` is the only way the rest of the package
reaches one. Adding a hand-off is a file beside trt_demo.py and an entry in `_REGISTRY`; the target whose
graph it hands on names it in its `handoffs`.
"""

from __future__ import annotations

from mpq_export.handoffs.base import HandOff, HandOffRecord, HandOffSource
from mpq_export.handoffs.optimum import Optimum
from mpq_export.handoffs.trt_demo import TrtDemo
from mpq_export.util.errors import MPQError

_REGISTRY: dict[str, HandOff] = {h.name: h for h in (TrtDemo(), Optimum())}
HANDOFF_NAMES = tuple(_REGISTRY)


def get_handoff(name: str) -> HandOff:
    if name not in _REGISTRY:
        raise MPQError(f"--emit takes a comma list of {', '.join(HANDOFF_NAMES)}, got '{name}'")
    return _REGISTRY[name]


__all__ = ["HandOff", "HandOffRecord", "HandOffSource", "HANDOFF_NAMES", "get_handoff"]
