"""Quantization formats: one object per way of storing a layer's weight and treating its input.

A format belongs to no target; each target (targets/<name>.py) lists the formats it really runs and
stores per op type, since the budget counts stored bits (docs/design.md, "Formats and targets"). Adding a
format is one file beside these (a `Format` subclass, formats/base.py) and one entry in `FORMATS`.
"""

from __future__ import annotations

from mpq_export.formats.base import (CONV_OPS, GEMM_OPS, FloatFormat, Format, GraphView, LayerCalibration,
                                     LayerStorage, WeightDQFormat)
from mpq_export.formats.fp8 import FP8
from mpq_export.formats.integer import W4A8, W4A16, W8A8
from mpq_export.formats.lowrank import LOW_RANK_LADDER, LowRankFormat
from mpq_export.formats.settings import QuantizeSettings
from mpq_export.formats.smooth import W8A8_SQ
from mpq_export.util.errors import MPQError

FP16 = FloatFormat("fp16")
FORMATS: tuple[Format, ...] = (FP16, W8A8, W4A8, W4A16, FP8, *LOW_RANK_LADDER, W8A8_SQ)
FORMAT_NAMES = tuple(f.name for f in FORMATS)
# bumped when what a format writes for a layer changes (results measured on formats, cached on disk, key on it)
FORMATS_VERSION = 4
# how a written graph is read back, most specific first (a low-rank layer also has a DequantizeLinear weight)
_RECOGNISERS = (LowRankFormat, WeightDQFormat)


def parse_format(name: str) -> Format:
    for f in FORMATS:
        if f.name == name:
            return f
    raise MPQError(f"unknown format '{name}' ({', '.join(FORMAT_NAMES)})")


def count_layer_bits(view: GraphView, node, layer) -> int:
    """The stored bits of `layer` (its graph node `node`) in a written file: the first format kind that
    recognises how the graph realises it; 16 per weight when none does (a float weight)."""
    for kind in _RECOGNISERS:
        bits = kind.bits_in_graph(view, node, layer)
        if bits is not None:
            return bits
    return layer.params * 16


__all__ = ["CONV_OPS", "GEMM_OPS", "FORMATS", "FORMAT_NAMES", "FP16", "FP8", "LOW_RANK_LADDER", "W4A8", "W4A16", "W8A8",
           "W8A8_SQ", "Format", "GraphView", "LayerCalibration", "LayerStorage", "LowRankFormat", "QuantizeSettings",
           "count_layer_bits", "parse_format"]
