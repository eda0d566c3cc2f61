"""Targets: one object per runtime, owning its formats and graph rules (targets/base.py).

`get_target(name)` is the only way the rest of the package reaches one; adding a target is a file
beside tensorrt.py and a line in `_REGISTRY`.
"""

from __future__ import annotations

from mpq_export.targets.base import Target, refuse_unknown
from mpq_export.targets.onnxruntime import OnnxRuntimeTarget
from mpq_export.targets.tensorrt import TensorRTTarget

_REGISTRY: dict[str, Target] = {t.name: t for t in (TensorRTTarget(), OnnxRuntimeTarget())}
TARGETS = tuple(_REGISTRY)
DEFAULT_TARGET = TensorRTTarget.name


def get_target(target: str | Target) -> Target:
    """The target object of a name (a Target passes through); a one-line error for an unknown name."""
    if isinstance(target, Target):
        return target
    if target not in _REGISTRY:
        refuse_unknown(target, TARGETS)
    return _REGISTRY[target]


def all_targets() -> list[Target]:
    return list(_REGISTRY.values())


__all__ = ["Target", "TARGETS", "DEFAULT_TARGET", "get_target", "all_targets"]
