"""What every target is: the formats it stores per op type and the graph rules of its runtime.

A target object is the one place that knows how a runtime takes a Q/DQ graph. The stages ask it
(`formats_for`, `activation_zero_point`, `finalize`, ...) instead of testing a target's name, so a new
target is one file beside this one, registered in targets/__init__.py.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from mpq_export.formats import Format, QuantizeSettings
from mpq_export.util.errors import MPQError


class Target:
    name: str = ""
    help: str = ""  # one line for --target's help
    # op type -> formats the target runs and stores, cheapest first
    formats: Mapping[str, tuple[Format, ...]] = {}
    # (op type, bits) -> why the target stores no such format (said when --bits or --budget asks for it)
    why_not: Mapping[tuple[str, int], str] = {}
    demo_budget: float = 8.0  # what `--demo` runs at on this target
    # graph rules
    activation_zero_point = np.array(0, dtype=np.int8)  # symmetric INT8 activations
    dq_per_consumer = False  # True: one DequantizeLinear per consumer (a fusion pattern wants it)
    quantize_residual_adds = False  # Q/DQ on both inputs of an Add that feeds an INT8-input conv
    widen_int4_conv_weights = False  # INT4 conv weights through a Cast to INT8 (a runtime without INT4 convs)
    builds_engines = False  # --build-engine applies
    checks_rules = False  # `mpq-export check` (TensorRT's rules) applies to its graphs
    # a target whose graph differs from FP32 even before quantizing (FP16) names the other target on which
    # the same allocation is also validated, so the report separates the FP16 graph's error from Q/DQ's
    compare_with: str | None = None
    handoffs: tuple[str, ...] = ()  # the --emit layouts of runtimes that load this target's graph
    gpu = None  # the GpuFamily whose format table applies (targets that build for a GPU)
    gpu_reason: str | None = None  # how that table was chosen, for the report

    def for_gpu(self, choice: str) -> "Target":
        """This target with the format table of GPU family `choice` (--gpu); "auto" keeps what it has."""
        if choice != "auto":
            from mpq_export.targets.gpus import family

            family(choice)  # an unknown name is refused as such first
            raise MPQError(f"--gpu {choice} chooses the formats of a TensorRT engine's GPU (this run: --target "
                           f"{self.name}, which builds no engine); drop --gpu or use --target tensorrt")
        return self

    def formats_for(self, op_type: str) -> tuple[Format, ...]:
        return self.formats[op_type]

    def stores(self, op_type: str, fmt: Format) -> bool:
        """Whether the target runs and stores `fmt` on `op_type` (a format of its table, or another size of a
        parameterised one there)."""
        return any(f == fmt or f.same_family(fmt) for f in self.formats_for(op_type))

    def format_names(self) -> list[str]:
        """Every format this target stores for some op type, in table order."""
        names: list[str] = []
        for fmts in self.formats.values():
            names += [f.name for f in fmts if f.name not in names]
        return names

    def format_for(self, op_type: str, bits: int) -> Format | None:
        """The format of `op_type` with `bits` stored weight bits, or None if the target has none."""
        return next((f for f in self.formats_for(op_type) if f.weight_bits == bits), None)

    def check_quantize_settings(self, settings: QuantizeSettings) -> None:
        """One-line error for a quantization setting this target cannot build or would ignore."""

    def resolve_quantize_settings(self, settings: QuantizeSettings) -> tuple[QuantizeSettings, list[str]]:
        """The settings with every 'auto' decided for this target, and why (for the report)."""
        from dataclasses import replace

        from mpq_export.core.choices import Switch

        if settings.reduce_range is Switch.AUTO:  # onnxruntime's integer kernels only
            return replace(settings, reduce_range=Switch.NO), []
        return settings, []

    def quantizes_conv_outputs(self, settings: QuantizeSettings) -> bool:
        """Whether an INT8-input convolution's output gets a Q/DQ of its own."""
        return False

    def check_activation_ranges(self, info, observed_max: dict[str, float]) -> None:
        """One-line error when activations the calibration saw cannot be held by the target's graph."""

    def float_graph(self, model):
        """The target's graph of an FP32 model before any Q/DQ, or None when it is the FP32 graph itself."""
        return None

    def finalize(self, model):
        """The last graph-wide step after the Q/DQ edits (e.g. FP16 conversion)."""
        return model

    def check_graph(self, path: str) -> str | None:
        """The rule checker's verdict on a written graph (None: the target has none); raises on a violation."""
        return None

    def __eq__(self, other) -> bool:  # one runtime with one GPU family's formats is one target
        return isinstance(other, Target) and (self.name, getattr(self.gpu, "name", None)) == \
            (other.name, getattr(other.gpu, "name", None))

    def __hash__(self) -> int:
        return hash((self.name, getattr(self.gpu, "name", None)))

    def __repr__(self) -> str:
        return f"<target {self.name}{f' ({self.gpu.name})' if self.gpu is not None else ''}>"


def refuse_unknown(name: str, known: tuple[str, ...]) -> None:
    raise MPQError(f"--target must be one of {', '.join(known)}, got '{name}'")
