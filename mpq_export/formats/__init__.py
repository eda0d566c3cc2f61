"""Quantization formats: one object per way of storing a layer's weight and treating its input.

A format belongs to no target; each target (targets/<name>.py) lists the formats it really runs and
stores per op type, since the budget counts stored bits (docs/design.md, "Formats and targets"). Adding a
format is one file beside these (a `Format` subclass, formats/base.py) and one entry in `FORMATS`.
"""

from __future__ import annotations

from mpq_export.formats.base import CONV_OPS, GEMM_OPS, FloatFormat, Format, GraphView, LayerStorage
from mpq_export.formats.fp8 import FP8
from mpq_export.formats.integer import W4A8, W4A16, W8A8
from mpq_export.formats.settings import QuantizeSettings
from mpq_export.util.errors import MPQError

FP16 = FloatFormat("fp16")
FORMATS: tuple[Format, ...] = (FP16, W8A8, W4A8, W4A16, FP8)
FORMAT_NAMES = tuple(f.name for f in FORMATS)


def parse_format(name: str) -> Format:
    for f in FORMATS:
        if f.name == name:
            return f
    raise MPQError(f"unknown format '{name}' ({', '.join(FORMAT_NAMES)})")


def count_layer_bits(view: GraphView, node, layer) -> int:
    """The stored bits of `layer` (its graph node `node`) in a written file: the first format kind that
    recognises how the graph realises it; 16 per weight when none does (a float weight)."""
    for kind in dict.fromkeys(type(f) for f in FORMATS):
        bits = kind.bits_in_graph(view, node, layer)
        if bits is not None:
            return bits
    return layer.params * 16


__all__ = ["CONV_OPS", "GEMM_OPS", "FORMATS", "FORMAT_NAMES", "FP16", "FP8", "W4A8", "W4A16", "W8A8", "Format",
           "GraphView", "LayerStorage", "QuantizeSettings", "count_layer_bits", "parse_format"]
