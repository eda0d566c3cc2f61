"""What a format is: one object per way of storing a layer's weight and treating its input.

A format owns everything that differs between formats: how many bits it stores for a layer (the budget's
cost), how it quantizes a weight (with GPTQ's input statistics where it uses them), what it writes into
the graph (`write`, through the Q/DQ writer of stages/quantize.py), how the bits are counted back from a
written file (`bits_in_graph`), and its expected error (`input_error`; the weight's error is measured on
`effective_weight`). Stages ask these methods and never test which format they hold; a new format is one
file in formats/ and one line in formats/__init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpq_export.formats.inputs import InputQuantizer
from mpq_export.formats.weights import QuantizedWeight, weight_sqnr_db

CONV_OPS = ("Conv", "ConvTranspose")
GEMM_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class LayerCalibration:
    """What calibration knows about one layer's input, for the formats that read it (stages/calibrate.py's
    `CalibrationStats.for_layer` makes it; a bare H array stands for one with nothing else)."""
    hessian: np.ndarray | None = None  # GPTQ's H: sum over steps of X^T X / tr, K x K, the weight's column order
    channel_amax: np.ndarray | None = None  # [K] max |x| per input channel (MatMul/Gemm inputs)
    channel_ms: np.ndarray | None = None  # [K] mean x^2 per input channel
    counts: np.ndarray | None = None  # the input's |x| histogram pooled over steps (core/histogram.py)
    energy: float = 0.0  # its sum of x^2
    thresholds: dict | None = None  # input quantizer name -> the threshold its scale maps onto its grid
    step_counts: np.ndarray | None = None  # [K, N_BINS]: the histogram per profiled step
    step_energy: np.ndarray | None = None  # [K]: sum of x^2 per profiled step

    def step_scale(self) -> np.ndarray | None:
        """Each profiled step's mean square over the pooled one (None without per-step statistics): a step
        of small activations sees the same rounding noise at a larger relative error."""
        if self.step_counts is None or self.step_energy is None or self.counts is None or self.energy <= 0:
            return None
        n = self.step_counts.sum(1)
        ok = (n > 0) & (self.step_energy > 0)
        return np.where(ok, (self.step_energy / np.maximum(n, 1)) / (self.energy / self.counts.sum()), np.nan)

    @property
    def clip_ratio(self) -> float:
        """The INT8 threshold --act-calib chose over the observed max (1: no clipping, or not known)."""
        t = self.thresholds or {}
        return min(1.0, t["int8"] / t["fp8"]) if t.get("fp8") and t.get("int8") else 1.0


def as_calibration(cal) -> LayerCalibration:
    """A LayerCalibration from what a caller gave: one, a bare H array, or nothing."""
    if isinstance(cal, LayerCalibration):
        return cal
    return LayerCalibration(hessian=cal)


@dataclass(frozen=True)
class LayerStorage:
    """How one layer's weight is stored in the written file."""
    format: str
    weight_dtype: str  # int4 | int8 | fp8 | float
    storage_bits: int  # bits of each stored weight element
    weight_sqnr_db: float | None  # the stored weight against the float one (None when kept float)
    detail: str = ""  # what the format chose for this layer: a low-rank branch's rank, a smoothing's alpha


class Format:
    """A layer's format. Subclasses set `weight_bits` (each stored weight element's width; 16: float) and
    `input` (the quantizer of the layer's input, or None: float), and implement the weight methods."""
    name: str = ""
    weight_bits: int = 16
    input: InputQuantizer | None = None
    summary: str = ""  # one line for the docs and --help
    # offered only to layers whose input varies across samples: a time-only layer (a timestep embedding's,
    # one input per step) turns a quantization error into one bias per step, which the error model, made
    # for errors that average out, cannot weigh
    per_sample_inputs_only = False

    @property
    def probe_quantizer(self) -> InputQuantizer | None:
        """The fake-quant branch a sensitivity probe switches on for this format's input (its own quantizer,
        unless the format transforms the input first)."""
        return self.input

    # --- the budget ----------------------------------------------------------------------------------
    @property
    def quantized(self) -> bool:
        return self.weight_bits < 16

    @property
    def act_bits(self) -> int | None:
        """8 when the layer's input goes through an 8-bit per-tensor Q/DQ, None when it stays float."""
        return 8 if self.input is not None else None

    @property
    def int8_input(self) -> bool:
        """The input goes through an INT8 Q/DQ (what TensorRT's residual-Add fusion and onnxruntime's
        integer convolutions look for)."""
        return self.input is not None and self.input.fuses_residual_add

    def layer_bits(self, layer) -> int:
        """The bits the target stores for this layer's weight in this format (scales are not counted)."""
        return layer.params * self.weight_bits

    def bits_per_weight(self, layer) -> float:
        return self.layer_bits(layer) / layer.params

    # --- the weight ----------------------------------------------------------------------------------
    def applies_to(self, layer) -> bool:
        """Whether this format can realise the layer at all (a target's table offers it per op type)."""
        return True

    def realisation(self, layer) -> tuple:
        """What this format writes for `layer`: two formats with equal realisations write the same layer
        (two branch sizes that round to one rank), and a layer is offered only the first of them."""
        return (self.name,)

    def same_family(self, other: "Format") -> bool:
        """Whether `other` is this format with another parameter (a low-rank branch of another size): a
        target that stores one stores the other."""
        return False

    def quantize_weight(self, layer, w: np.ndarray, settings, cal) -> QuantizedWeight:
        """The stored form of the weight; `cal`: the layer's LayerCalibration (or a bare H, or None)."""
        raise NotImplementedError(f"format {self.name} stores no quantized weight")

    def effective_weight(self, layer, w: np.ndarray, settings, cal) -> np.ndarray:
        """The float weight the layer computes with in this format (what the probes and the error model
        see), in the input's own units."""
        return self.quantize_weight(layer, w, settings, cal).dequantize()

    def effective_rows(self, layer, w: np.ndarray, settings, cal, rows: np.ndarray) -> np.ndarray:
        """effective_weight's output channels `rows`, [len(rows), K] (gptq.weight_matrix's layout), for the
        error model on wide layers (error_rows). Quantization is per output channel (its scales, its INT4
        blocks along K, GPTQ's updates within a row), so the channels are quantized on their own; a format
        whose parts depend on the whole weight (a low-rank branch, smoothing) computes those first."""
        from mpq_export.formats.gptq import weight_matrix

        sub_layer, sub_w = row_subset(layer, w, rows)
        return weight_matrix(self.effective_weight(sub_layer, sub_w, settings, cal), sub_layer)

    # --- the graph -----------------------------------------------------------------------------------
    def write(self, writer, layer, node, w: np.ndarray, quantized) -> LayerStorage:
        """Edit `node` (the layer's graph node) into this format with `writer` (stages/quantize.py);
        `quantized` is what quantize_weight returned (memoised by the writer)."""
        return LayerStorage(self.name, "float", 16, None)

    @classmethod
    def bits_in_graph(cls, view, node, layer) -> int | None:
        """The stored bits of `layer` when the written graph realises it as this kind of format, else None
        (formats/__init__.py tries each kind in turn; the float fallback counts 16 per weight)."""
        return None

    def probe_feeds(self, layer, w: np.ndarray, quantized, masks: dict[str, str]) -> dict:
        """What a sensitivity probe feeds for this layer in this format, beside its effective weight: the
        switch of its input quantizer's fake-quant branch (stages/sensitivity.py)."""
        if self.probe_quantizer is None:
            return {}
        return {masks[self.probe_quantizer.name]: np.array(1.0, dtype=np.float32)}

    # --- the error model -----------------------------------------------------------------------------
    def input_error(self, layer, w: np.ndarray, settings, cal) -> float:
        """Relative squared error the layer's input quantizer adds to its output (0 when float), from the
        streamed histogram of that input: the output's, where calibration kept each input channel's mean
        square (GEMMs), so that every format's input error is measured where the weight's is; else the
        input's own relative error."""
        cal = as_calibration(cal)
        if self.input is None or cal.energy <= 0 or cal.counts is None:
            return 0.0
        threshold = cal.thresholds[self.input.name]
        total = self.input.expected_error(cal.counts, threshold)
        if cal.channel_ms is None or w is None:
            return total / cal.energy
        ms = cal.channel_ms.astype(np.float64)
        scale = cal.step_scale()
        if scale is None:  # pooled over the steps
            noise = ms * (total / cal.energy) if self.input.relative_error else np.full_like(ms, total / cal.counts.sum())
            return output_relative_noise(layer, w, noise, cal)
        # the mean over the profiled steps of each step's relative error: a step of small activations (late in
        # the trajectory, where the final sample is decided) counts as much as one of large ones. Per channel,
        # INT8 rounding noise is the same everywhere (one step for the whole tensor); FP8's error is relative,
        # so it follows each channel's energy
        unit = output_relative_noise(layer, w, np.ones_like(ms), cal)  # sum_j ||W_j||^2 over the output energy
        per_ms = output_relative_noise(layer, w, ms, cal)  # sum_j ms_j ||W_j||^2 over the output energy
        rel = []
        for k in np.flatnonzero(np.isfinite(scale)):
            err = self.input.expected_error(cal.step_counts[k], threshold)
            if self.input.relative_error:
                rel.append(per_ms * err / cal.step_energy[k])
            else:
                rel.append(unit * err / cal.step_counts[k].sum() / scale[k])
        return float(np.mean(rel)) if rel else 0.0

    def __eq__(self, other) -> bool:
        return isinstance(other, Format) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<format {self.name}>"


class FloatFormat(Format):
    """The layer as it is (FP16 in the tensorrt target's graph, FP32 in onnxruntime's)."""

    def __init__(self, name: str = "fp16"):
        self.name, self.weight_bits, self.input = name, 16, None
        self.summary = "the layer kept in float (counted as 16 bits)"

    def effective_weight(self, layer, w, settings, cal):
        return w


class WeightDQFormat(Format):
    """A format whose weight is stored quantized behind one DequantizeLinear (and whose input, if it has a
    quantizer, goes through a Q/DQ pair)."""
    stored_dtype: str = ""  # int4 | int8 | fp8

    def stored_constant(self, values: np.ndarray):
        """(values for gs.Constant, storage dtype name) of the quantized weight."""
        raise NotImplementedError

    def write(self, writer, layer, node, w, quantized: QuantizedWeight) -> LayerStorage:
        values, storage = self.stored_constant(quantized.values)
        node.inputs[1] = writer.weight_dq(layer, w.shape, values, storage, quantized)
        if self.input is not None:
            node.inputs[0] = writer.quantized_activation(layer.activation_input, node.inputs[0], self.input)
            if layer.op_type == "Conv" and self.int8_input and writer.quantizes_conv_outputs():
                writer.quantize_output(layer.output, node)
        return LayerStorage(self.name, storage, 4 if storage == "int4" else 8,
                            weight_sqnr_db(w, quantized.dequantize()))

    @classmethod
    def bits_in_graph(cls, view, node, layer) -> int | None:
        stored = view.stored_weight(node)
        if stored is None:
            return None
        return layer.params * stored_bits(stored.data_type)


def stored_bits(onnx_type: int) -> int:
    """Bits of a stored weight element of an ONNX element type (16 for anything float)."""
    from onnx import TensorProto  # lazily: formats are imported by --help

    return {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.INT8: 8, TensorProto.UINT8: 8,
            TensorProto.FLOAT8E4M3FN: 8}.get(onnx_type, 16)


class GraphView:
    """What counting a written file's bits looks up: initializers, producers and consumers (no weights loaded)."""

    def __init__(self, model):
        from mpq_export.util.onnx_io import consumers_of, producers_of

        self.inits = {i.name: i for i in model.graph.initializer}
        self.producers, self.consumers = producers_of(model.graph), consumers_of(model.graph)

    def source(self, tensor: str) -> str:
        """The tensor behind layout-only ops (Cast, Transpose, Reshape)."""
        while tensor in self.producers and self.producers[tensor].op_type in ("Cast", "Transpose", "Reshape"):
            tensor = self.producers[tensor].input[0]
        return tensor

    def low_rank_factors(self, node):
        """(A, B) initializers when the layer node's output is added to MatMul(MatMul(x, A), B) with x the
        node's own input (formats/lowrank.py), else None."""
        out, x = node.output[0], self.source(node.input[0])
        for add in self.consumers.get(out, []):
            other = [i for i in add.input if i != out] if add.op_type == "Add" else []
            mb = self.producers.get(other[0]) if len(other) == 1 else None
            ma = self.producers.get(mb.input[0]) if mb is not None and mb.op_type == "MatMul" else None
            if ma is None or ma.op_type != "MatMul" or self.source(ma.input[0]) != x:
                continue
            a, b = self.inits.get(self.source(ma.input[1])), self.inits.get(self.source(mb.input[1]))
            if a is not None and b is not None:
                return a, b
        return None

    def stored_weight(self, node):
        """The initializer a layer node's weight is dequantized from (INT4 widened by a Cast included), or None."""
        src = self.source(node.input[1])
        dq = self.producers.get(src)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        stored = dq.input[0]
        if stored in self.producers and self.producers[stored].op_type == "Cast":  # INT4 widened at load (onnxruntime)
            stored = self.producers[stored].input[0]
        return self.inits.get(stored)


# The error model on wide layers (stages/format_error.py): ERROR_ROWS output channels, drawn once per layer
# (seeded), stand for all of a layer's past ERROR_ROWS_FROM (no bundled model has such a layer). Each channel
# is quantized on its own (Format.effective_rows), so the sample's relative error estimates the layer's
# without bias, and the same channels serve every format of the layer, so differences between formats are
# far tighter than the estimate itself. At SD3-medium's widths this divides the stage's time by 6 to 36.
ERROR_ROWS = 256
ERROR_ROWS_FROM = 1024


def error_rows(layer) -> np.ndarray | None:
    """The output channels the error model measures a layer on (None: all of them)."""
    n = layer.weight_shape[layer.weight_axis]
    if n <= ERROR_ROWS_FROM:
        return None
    return np.sort(np.random.default_rng(0).choice(n, ERROR_ROWS, replace=False))


def row_subset(layer, w: np.ndarray, rows: np.ndarray):
    """(the layer restricted to output channels `rows`, its weight), in the weight's own layout."""
    import dataclasses

    from mpq_export.formats.gptq import from_matrix, weight_matrix

    shape = list(w.shape)
    shape[layer.weight_axis] = len(rows)
    sub = np.ascontiguousarray(from_matrix(weight_matrix(np.asarray(w), layer)[rows], tuple(shape), layer))
    return dataclasses.replace(layer, weight_shape=tuple(shape), params=int(np.prod(shape))), sub


def output_relative_noise(layer, w: np.ndarray, noise: np.ndarray, cal: LayerCalibration) -> float:
    """sum_j noise_j ||W_j||^2 / E||x W||^2: independent noise of power noise_j on input channel j, relative to
    the layer's output energy (E[x x^T] from H scaled to the channels' mean squares, or their diagonal); on
    the output channels of error_rows, both sums being over output channels."""
    from mpq_export.formats.gptq import weight_matrix

    wm = weight_matrix(np.asarray(w), layer)
    rows = error_rows(layer)
    wm = (wm if rows is None else wm[rows]).astype(np.float64)  # [N, K]
    col_energy = (wm ** 2).sum(0)  # ||W_j||^2 per input channel j
    ms = cal.channel_ms.astype(np.float64)
    if cal.hessian is not None:
        h = cal.hessian.astype(np.float64)
        quad = np.einsum("nk,kl,nl->", wm, h, wm) if rows is None else ((wm @ h) * wm).sum()  # BLAS when wide
        signal = float(quad) * ms.sum() / max(float(np.trace(h)), 1e-30)
    else:
        signal = float((ms * col_energy).sum())
    return float((noise * col_energy).sum()) / signal if signal > 0 else 0.0
