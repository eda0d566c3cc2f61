"""quantize stage: write per-layer Q/DQ nodes (onnx-graphsurgeon) for a BitAllocation.

Per docs/design.md's format table:
- w8a8: INT8 symmetric per-output-channel weights; the layer's input through an INT8 per-tensor
  Q/DQ pair (zero point 0, scale from the calibrated |max|).
- w4a8 (Conv/ConvTranspose): INT4 symmetric per-channel weights, INT8 per-tensor input.
- w4a16 (MatMul/Gemm): INT4 weight-only, blocks of `block_size` along K; input left in float.
- fp16: untouched.
Weight scales come from an MSE clipping search per channel / block, not plain min-max.

How each target's runtime takes the Q/DQ (zero points, one DequantizeLinear per consumer or shared,
residual Adds, conv outputs, the FP16 graph) is the target object's to say (mpq_export/targets/).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from mpq_export.stages.allocate import BitAllocation
from mpq_export.targets.formats import Format
from mpq_export.util.errors import MPQError
from mpq_export.stages.inspect import ModelInfo, QuantLayer
from mpq_export.util.onnx_io import (MIN_IR_VERSION, load_for_edit, load_onnx, producers_of, read_external_tensor,
                                    save_model)
from mpq_export.stages.rounding import DEFAULT_ROUNDING, ROUNDINGS
from mpq_export.targets import Target, get_target
from mpq_export.targets.formats import FP8_MAX, GEMM_OPS, stored_weight, to_fp8




@dataclass(frozen=True)
class QuantizeSettings:
    block_size: int = 128  # INT4 block along K for MatMul/Gemm weights
    clip_search: bool = True  # MSE clipping search for weight scales (False: plain |max|)
    clip_grid: int = 20  # candidate clip ratios in [0.5, 1]
    rounding: str = DEFAULT_ROUNDING  # nearest | gptq (needs calibration's input statistics; rounding.py)
    # onnxruntime target: quantize the output of each INT8-input convolution (w8a8, w4a8) too, so that
    # onnxruntime's CPU provider fuses DQ -> Conv -> Q into QLinearConv (targets/onnxruntime.py); it
    # costs accuracy (docs/quality.md, "onnxruntime's integer convolutions"); False: --float-conv-outputs
    integer_conv: bool = True
    # onnxruntime target: the INT8 weights of W8A8 MatMul/Gemm layers in [-63, 63] (onnxruntime's
    # reduce_range). Its integer GEMM on x86 CPUs without VNNI sums u8 x s8 pairs in 16 bits, which
    # full-range weights can saturate (measured in docs/quality.md, "digits-dit"); the file still stores
    # INT8, so the budget counts 8 bits. --reduce-range
    reduce_range: bool = False
    # tensorrt target on an FP8 GPU: FP8 Q/DQ on both inputs of attention's activation x activation
    # MatMuls (Q K^T and P V), which TensorRT fuses into its FP8 attention (ModelOpt's quantize_mha);
    # the Softmax output's scale is 1 / 448 (its max is 1), Q, K and V's their observed max / 448.
    # Off by default (docs/quality.md measures it). --fp8-attention
    fp8_attention: bool = False

    def __post_init__(self):
        if self.rounding not in ROUNDINGS:
            raise MPQError(f"--weight-rounding must be one of {', '.join(ROUNDINGS)}, got '{self.rounding}'")
        if self.block_size < 2 or self.block_size % 2:
            raise MPQError(f"--block-size must be an even number >= 2, got {self.block_size}")


@dataclass
class QuantizedWeight:
    values: np.ndarray  # integer values, the weight's shape
    scale: np.ndarray  # per-channel: [C]; blocked: weight rank with the blocked axis shrunk
    axis: int
    block_size: int | None  # None for per-channel

    def scale_like(self) -> np.ndarray:
        """The scale of every weight element (the weight's shape)."""
        if self.block_size is None:
            shape = [1] * self.values.ndim
            shape[self.axis] = -1
            return np.broadcast_to(self.scale.reshape(shape), self.values.shape)
        s = np.repeat(self.scale, self.block_size, axis=self.axis)
        return np.take(s, np.arange(self.values.shape[self.axis]), axis=self.axis)

    def dequantize(self) -> np.ndarray:
        return self.values.astype(np.float32) * self.scale_like()


@dataclass(frozen=True)
class LayerStorage:
    """How one layer's weight is stored in the written file."""
    format: str
    weight_dtype: str  # int4 | int8 | float
    storage_bits: int
    weight_sqnr_db: float | None  # the stored weight against the float one (None when kept float)


@dataclass
class QuantizedModel:
    path: str
    target: str
    layer_storage: dict[str, LayerStorage] = field(default_factory=dict)  # layer name -> its storage
    act_scales: dict[str, float] = field(default_factory=dict)  # activation tensor -> INT8 scale written
    seconds: float = 0.0


def _groups_view(w: np.ndarray, axis: int, block_axis: int | None, block: int | None):
    """Rearrange w into [groups, elements] rows that share one scale, and a function back."""
    if block is None:
        moved = np.moveaxis(w, axis, 0)
        return moved.reshape(moved.shape[0], -1), None
    # blocked: w is 2-D; channel axis `axis`, blocks of `block` along `block_axis`
    wt = w if block_axis == 0 else w.T  # [K, N]
    K, N = wt.shape
    nb = -(-K // block)
    pad = np.zeros((nb * block, N), dtype=w.dtype)
    pad[:K] = wt
    g = pad.reshape(nb, block, N).transpose(0, 2, 1).reshape(nb * N, block)  # rows: (block, channel)
    return g, (nb, N, K)


def _row_scales(g: np.ndarray, top: float, on_grid, clip_search: bool, grid: int) -> np.ndarray:
    """The scale of each row of g: |max| / top, or with `clip_search` the clip ratio in [0.5, 1] of least
    squared error once rounded by `on_grid` (the stored grid in units of the scale: integers or E4M3)."""
    amax = np.abs(g).max(axis=1)
    amax = np.where(amax > 0, amax, 1e-8).astype(np.float32)
    best_scale = amax / top
    if clip_search:
        best_err = np.full(len(g), np.inf, dtype=np.float64)
        for r in np.linspace(0.5, 1.0, grid):
            s = (amax * r / top)[:, None]
            err = ((on_grid(g / s) * s - g) ** 2).sum(1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_scale = np.where(better, s[:, 0], best_scale)
    return best_scale.astype(np.float32)


def quantize_weight(w: np.ndarray, bits: int, axis: int, block_axis: int | None = None,
                    block_size: int | None = None, clip_search: bool = True, grid: int = 20) -> QuantizedWeight:
    """Symmetric quantization to [-(2^(b-1)-1), 2^(b-1)-1] with an MSE-optimal clip per channel/block."""
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, dtype=np.float32)
    g, blocked = _groups_view(w, axis, block_axis, block_size)
    best_scale = _row_scales(g, qmax, lambda v: np.clip(np.round(v), -qmax, qmax), clip_search, grid)
    if blocked is None:
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / best_scale.reshape(shape)), -qmax, qmax).astype(np.int8)
        return QuantizedWeight(q, best_scale, axis, None)
    nb, N, K = blocked
    scale_kn = best_scale.reshape(nb, N)  # [K/B, N]
    s_full = np.repeat(scale_kn, block_size, axis=0)[:K]
    wt = w if block_axis == 0 else w.T
    q = np.clip(np.round(wt / s_full), -qmax, qmax).astype(np.int8)
    if block_axis == 0:
        return QuantizedWeight(q, scale_kn, 0, block_size)
    return QuantizedWeight(q.T.copy(), scale_kn.T.copy(), 1, block_size)


def quantize_weight_fp8(w: np.ndarray, axis: int, clip_search: bool = True, grid: int = 20) -> QuantizedWeight:
    """FP8 E4M3 per-channel weights: scale |max| / 448 per output channel (times the clip ratio of least
    squared error when searching), values rounded to the nearest E4M3 value (QuantizedWeight.values holds
    them as float32, exactly representable)."""
    w = np.asarray(w, dtype=np.float32)
    g, _ = _groups_view(w, axis, None, None)
    # E4M3's error is relative, so clipping rarely pays; the search keeps it only where it does
    best_scale = _row_scales(g, FP8_MAX, to_fp8, clip_search, grid)
    shape = [1] * w.ndim
    shape[axis] = -1
    return QuantizedWeight(to_fp8(w / best_scale.reshape(shape)), best_scale, axis, None)


def weight_sqnr_db(w: np.ndarray, qw: QuantizedWeight) -> float:
    from mpq_export.util.metrics import sqnr_db

    return sqnr_db(w, qw.dequantize())


def quantize_layer_weight(layer: QuantLayer, w: np.ndarray, fmt: Format, settings: QuantizeSettings,
                          hessian: np.ndarray | None = None) -> QuantizedWeight:
    """The weight of one layer in its format: per-channel, or INT4 blocks along K for MatMul/Gemm.
    With rounding 'gptq' and the layer's input statistics, the integers minimise the output error."""
    if fmt.element == "fp8":
        qw = quantize_weight_fp8(w, layer.weight_axis, clip_search=settings.clip_search, grid=settings.clip_grid)
        if settings.rounding == "gptq" and hessian is not None:  # GPTQ on FP8's grid instead of the integers
            from mpq_export.stages.rounding import from_matrix, gptq_round, weight_matrix

            wm, sm = weight_matrix(np.asarray(w, np.float32), layer), weight_matrix(qw.scale_like(), layer)
            qw.values = from_matrix(gptq_round(wm, sm, hessian, 0, grid=to_fp8), w.shape, layer).astype(np.float32)
        return qw
    blocked = fmt.weight_bits == 4 and layer.op_type in GEMM_OPS
    # the integer range: one bit less for the W8A8 GEMMs of --reduce-range, stored as INT8 all the same
    bits = 7 if settings.reduce_range and fmt.weight_bits == 8 and fmt.act_bits == 8 and layer.op_type in GEMM_OPS \
        else fmt.weight_bits
    if blocked:
        qw = quantize_weight(w, 4, layer.weight_axis, block_axis=layer.reduction_axis,
                             block_size=settings.block_size, clip_search=settings.clip_search, grid=settings.clip_grid)
    else:
        qw = quantize_weight(w, bits, layer.weight_axis, clip_search=settings.clip_search, grid=settings.clip_grid)
    if settings.rounding == "gptq" and hessian is not None:
        from mpq_export.stages.rounding import from_matrix, gptq_round, gptq_scale_search, weight_matrix

        qmax = 2 ** (bits - 1) - 1
        wm, sm = weight_matrix(np.asarray(w, np.float32), layer), weight_matrix(qw.scale_like(), layer)
        if fmt.weight_bits == 4 and qw.block_size is None:  # INT4 per channel: the output error
            # chooses each channel's scale too (rounding.py); INT4 blocks keep plain GPTQ, where the
            # search did not help (docs/design.md, "Weight rounding")
            q, mult = gptq_scale_search(wm, sm, hessian, qmax)
            qw.scale = (qw.scale * mult).astype(np.float32)
        else:
            q = gptq_round(wm, sm, hessian, qmax)
        qw.values = from_matrix(q, w.shape, layer).astype(np.int8)
    return qw


def activation_scale(amax: float) -> float:
    """INT8 per-tensor symmetric scale of clipping threshold `amax` (act_ranges); strictly positive
    (a TensorRT rule, and 0 would divide by 0)."""
    return max(float(amax), 1e-6) / 127.0


def quantize(info: ModelInfo, allocation: BitAllocation, act_amax: dict[str, float], out_path: str,
             settings: QuantizeSettings, target: str | Target, model=None,
             hessians: dict[str, np.ndarray] | None = None, weight_memo: dict | None = None,
             fp8_amax: dict[str, float] | None = None) -> QuantizedModel:
    """Write the Q/DQ model for `allocation` on `target` to out_path (the caller makes it atomic).

    `act_amax`: activation tensor -> INT8 clipping threshold (act_ranges.choose_ranges).
    `fp8_amax`: activation tensor -> the |max| that an FP8 input's scale maps onto 448 (the observed max,
    ActivationRanges.observed_max); needed when the allocation has fp8 layers.
    `hessians`: layer -> input statistics (CalibrationStats.hessians), used by rounding 'gptq'.
    `model`: the FP32 model already loaded by `load_for_edit` (not modified), to skip reloading when
    many variants of one model are written (the sensitivity scorer).
    `weight_memo`: a dict shared by calls that write the same allocation for several targets: each
    layer's integers are computed once (GPTQ takes minutes per target at Stable-Diffusion size).
    """
    from onnx_graphsurgeon.logger import G_LOGGER

    # graph surgeon warns once per run that FP8 has no NumPy type (it keeps the ONNX type, as intended)
    severity, G_LOGGER.severity = G_LOGGER.severity, max(G_LOGGER.severity, G_LOGGER.ERROR)
    try:
        return _quantize(info, allocation, act_amax, out_path, settings, target, model, hessians, weight_memo, fp8_amax)
    finally:
        G_LOGGER.severity = severity


def _quantize(info, allocation, act_amax, out_path, settings, target, model, hessians, weight_memo, fp8_amax):
    t0 = time.perf_counter()
    target = get_target(target)
    target.check_quantize_settings(settings)
    # weights kept in external files (large models) are read one layer at a time, never all at once
    model = model if model is not None else load_for_edit(info.path, load_weights=False)
    if fp8_amax is None and any(f.element == "fp8" and f.act_bits for f in allocation.formats):
        raise MPQError("internal: fp8 layers need their inputs' observed maxima (fp8_amax)")
    writer = _QDQWriter(model, os.path.dirname(os.path.abspath(info.path)), settings, target, act_amax,
                        QuantizedModel(path=out_path, target=target.name), fp8_amax or {})
    for layer, fmt in zip(info.layers, allocation.formats):
        if layer.name != allocation.layer_names[len(writer.result.layer_storage)]:
            raise MPQError("internal: allocation and model layers are out of order")
        if fmt not in target.formats_for(layer.op_type):
            raise MPQError(f"format {fmt.name} of layer {layer.name} ({layer.op_type}) is not stored by the "
                           f"{target.name} target; allocate for target '{target.name}'")
        writer.quantize_layer(layer, fmt, (hessians or {}).get(layer.name), weight_memo)
    if settings.fp8_attention:
        for mm in info.attention_matmuls:
            writer.quantize_attention_matmul(mm)
    if target.quantize_residual_adds:  # for every Add that feeds a conv whose input is INT8
        fmt_of = dict(zip(allocation.layer_names, allocation.formats))
        for residual in info.residual_adds:
            if any(fmt_of[n].int8_input for n in residual.feeds):
                writer.quantize_add_inputs(residual)
    save_model(writer.export(), out_path)
    writer.result.seconds = time.perf_counter() - t0
    return writer.result


class _QDQWriter:
    """Q/DQ edits of one FP32 graph (onnx-graphsurgeon): weight DequantizeLinear per quantized layer,
    INT8 Q/DQ on activations, and what the target's runtime needs around them."""

    def __init__(self, model, weights_dir: str, settings: QuantizeSettings, target: Target,
                 act_amax: dict[str, float], result: QuantizedModel, fp8_amax: dict[str, float]):
        import onnx_graphsurgeon as gs

        self.graph = gs.import_onnx(model)
        self.nodes = {n.name: n for n in self.graph.nodes}
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.weights_dir, self.settings, self.act_amax, self.result = weights_dir, settings, act_amax, result
        self.fp8_amax = fp8_amax
        self.target = target
        self.float_dtype = np.float32  # the edits are made on the FP32 graph; target.finalize converts it
        self.zero_point = target.activation_zero_point
        # keyed by (tensor, element): one tensor read by an INT8 layer and an FP8 layer gets a quantizer of each
        self.act_q: dict[tuple[str, str], tuple] = {}  # -> its (QuantizeLinear output, scale, zero point)
        self.act_qdq: dict = {}  # -> its shared DequantizeLinear output (tensorrt)
        self.dq_count: dict[tuple[str, str], int] = {}

    def initializer_values(self, name: str) -> np.ndarray:
        from onnx import external_data_helper, numpy_helper

        # read from the file or the proto, not through Constant.values: graph surgeon would keep the
        # FP32 array in the Constant, a second copy of every weight (GBs at Stable-Diffusion size)
        t = self.initializers[name]
        if external_data_helper.uses_external_data(t):
            return read_external_tensor(t, self.weights_dir)
        return numpy_helper.to_array(t)

    def weight_values(self, tensor) -> np.ndarray:
        import onnx_graphsurgeon as gs

        if isinstance(tensor, gs.Constant):
            if tensor.name in self.initializers:
                return self.initializer_values(tensor.name)
            return np.asarray(tensor.values)
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is not None and producer.op == "Constant":
            return np.asarray(producer.attrs["value"].values)
        raise MPQError(f"weight {tensor.name} is not a constant")

    def quantized_activation(self, name: str, tensor, element: str = "int"):
        """The tensor through its per-tensor Q/DQ: INT8 at threshold act_amax[name], or FP8 E4M3 with the
        observed max mapped onto 448 (fp8_amax[name]); one Q per tensor and element."""
        import onnx_graphsurgeon as gs

        key = (name, element)
        if key in self.act_qdq:
            return self.act_qdq[key]
        tag = "" if element == "int" else f"_{element}"
        if key not in self.act_q:
            amax = self.act_amax if element == "int" else self.fp8_amax
            if name not in amax:
                raise MPQError(f"internal: no calibrated range for activation '{name}'")
            if element == "int":
                scale, zp_values, q_dtype = activation_scale(amax[name]), self.zero_point, self.zero_point.dtype
            else:
                from mpq_export.targets.formats import fp8_constant

                from onnx import TensorProto

                # graph surgeon keeps an ONNX type it has no NumPy type for (and says so once)
                scale, zp_values = max(float(amax[name]), 1e-6) / FP8_MAX, fp8_constant(np.zeros(()))
                q_dtype = TensorProto.FLOAT8E4M3FN
            self.result.act_scales[name + tag] = scale
            s = gs.Constant(f"{name}_act_scale{tag}", np.array(scale, dtype=self.float_dtype))
            zp = gs.Constant(f"{name}_act_zero_point{tag}", zp_values)
            q = gs.Variable(f"{name}_quantized{tag}", dtype=q_dtype, shape=tensor.shape)
            self.graph.nodes.append(gs.Node("QuantizeLinear", name=f"{name}_QuantizeLinear{tag}", inputs=[tensor, s, zp],
                                            outputs=[q]))
            self.act_q[key] = (q, s, zp)
        q, s, zp = self.act_q[key]
        i = self.dq_count[key] = self.dq_count.get(key, -1) + 1
        suffix = tag + (f"_{i}" if i else "")
        dq = gs.Variable(f"{name}_dequantized{suffix}", dtype=tensor.dtype, shape=tensor.shape)
        self.graph.nodes.append(gs.Node("DequantizeLinear", name=f"{name}_DequantizeLinear{suffix}",
                                        inputs=[q, s, zp], outputs=[dq]))
        if not self.target.dq_per_consumer:
            self.act_qdq[key] = dq
        return dq

    def quantize_output(self, name: str, node) -> None:
        """Q/DQ on a layer's output, keeping the output tensor's name for its consumers."""
        import onnx_graphsurgeon as gs

        if (name, "int") in self.act_q:  # already quantized where a consumer reads it: leave the output float
            return
        y = node.outputs[0]
        raw = gs.Variable(f"{name}_before_output_quantizer", dtype=y.dtype, shape=y.shape)
        node.outputs[0] = raw
        dq = self.quantized_activation(name, raw)
        dq.inputs[0].outputs[0] = y  # the DequantizeLinear now produces the original tensor

    def quantize_layer(self, layer: QuantLayer, fmt: Format, hessian: np.ndarray | None,
                       weight_memo: dict | None) -> None:
        """The layer in format `fmt`: its weight behind a DequantizeLinear, its input (and on the
        onnxruntime target a conv's output) through INT8 Q/DQ; float formats stay as they are."""
        import onnx_graphsurgeon as gs
        from onnx import TensorProto

        node = self.nodes.get(layer.node_name)
        if node is None:
            raise MPQError(f"internal: node {layer.node_name} vanished after the opset conversion")
        if not fmt.quantized:
            self.result.layer_storage[layer.name] = LayerStorage(fmt.name, "float", 16, None)
            return
        st = self.settings
        w = self.weight_values(node.inputs[1])
        key = (layer.name, fmt.name, st.rounding, st.block_size, st.clip_search, st.clip_grid)
        qw = weight_memo.get(key) if weight_memo is not None else None
        if qw is None:
            qw = quantize_layer_weight(layer, w, fmt, st, hessian)
            if weight_memo is not None:
                weight_memo[key] = qw
        values, storage = stored_weight(qw.values, fmt)
        qc = gs.Constant(f"{layer.name}.weight_quantized", values)
        sc = gs.Constant(f"{layer.name}.weight_scale", qw.scale.astype(self.float_dtype))
        attrs = {"axis": qw.axis}
        if qw.block_size is not None:
            attrs["block_size"] = qw.block_size
        if self.target.widen_int4_conv_weights and storage == "int4" and layer.op_type == "Conv":
            # a Cast to INT8, folded once when a session loads the model, lets the runtime's integer
            # convolution take the layer while the file keeps 4-bit storage
            w8 = gs.Variable(f"{layer.name}.weight_int8", dtype=np.int8, shape=list(w.shape))
            self.graph.nodes.append(gs.Node("Cast", name=f"{layer.name}.weight_Cast", inputs=[qc], outputs=[w8],
                                            attrs={"to": int(TensorProto.INT8)}))
            qc = w8
        wdq = gs.Variable(f"{layer.name}.weight_dequantized", dtype=self.float_dtype, shape=list(w.shape))
        self.graph.nodes.append(gs.Node("DequantizeLinear", name=f"{layer.name}.weight_DequantizeLinear",
                                        inputs=[qc, sc], outputs=[wdq], attrs=attrs))
        node.inputs[1] = wdq
        if fmt.act_bits == 8:
            node.inputs[0] = self.quantized_activation(layer.activation_input, node.inputs[0], fmt.element)
            if layer.op_type == "Conv" and fmt.int8_input and self.target.quantizes_conv_outputs(st):
                self.quantize_output(layer.output, node)
        self.result.layer_storage[layer.name] = LayerStorage(fmt.name, storage, 4 if storage == "int4" else 8,
                                                             weight_sqnr_db(w, qw))

    def quantize_attention_matmul(self, mm) -> None:
        """FP8 Q/DQ on both inputs of an attention MatMul (a Softmax output's max is 1)."""
        node = self.nodes[mm.node_name]
        for idx, tname in enumerate(mm.inputs):
            if idx == mm.softmax_input:
                self.fp8_amax = {**self.fp8_amax, tname: 1.0}
            elif tname not in self.fp8_amax:
                raise MPQError(f"internal: no calibrated range for attention input '{tname}' (calibrate with "
                               f"attention_inputs)")
            node.inputs[idx] = self.quantized_activation(tname, node.inputs[idx], "fp8")

    def quantize_add_inputs(self, residual) -> None:
        add = self.nodes[residual.node_name]
        for idx, tname in enumerate(residual.inputs):
            add.inputs[idx] = self.quantized_activation(tname, add.inputs[idx])

    def export(self):
        """The edited graph as a ModelProto, the float weights it keeps inside it, finished for the target."""
        import onnx_graphsurgeon as gs
        from onnx import external_data_helper

        self.graph.cleanup().toposort()
        for c in self.graph.tensors().values():  # what stays float (pins, norms, biases) travels inside the new file
            if isinstance(c, gs.Constant) and c.name in self.initializers and \
                    external_data_helper.uses_external_data(self.initializers[c.name]):
                c.values = self.initializer_values(c.name)
                c.data_location = None  # graph surgeon would otherwise still mark it external
        out = gs.export_onnx(self.graph)
        out.ir_version = max(out.ir_version, MIN_IR_VERSION)
        return self.target.finalize(out)


def count_weight_bits(path: str, info: ModelInfo) -> tuple[float, dict[str, int]]:
    """Average weight bits of the quantizable layers counted from the file itself.

    A layer whose weight reaches it through DequantizeLinear counts its stored integer width (INT4 4,
    INT8 8); a float weight counts 16, as the budget does. This is the number the budget bounds.
    """
    import onnx

    model = load_onnx(path, load_weights=False)
    inits = {i.name: i for i in model.graph.initializer}
    producers = producers_of(model.graph)
    by_name = {n.name: n for n in model.graph.node}
    bits = {}
    for layer in info.layers:
        node = by_name[layer.node_name]
        src = node.input[1]
        while src in producers and producers[src].op_type in ("Cast", "Transpose", "Reshape"):
            src = producers[src].input[0]
        b = 16
        if src in producers and producers[src].op_type == "DequantizeLinear":
            stored = producers[src].input[0]
            if stored in producers and producers[stored].op_type == "Cast":  # INT4 widened at load (onnxruntime)
                stored = producers[stored].input[0]
            q = inits.get(stored)
            if q is not None:
                b = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT8: 8,
                     onnx.TensorProto.UINT8: 8, onnx.TensorProto.FLOAT8E4M3FN: 8}.get(q.data_type, 16)
        bits[layer.name] = b
    total = sum(l.params for l in info.layers)
    return sum(bits[l.name] * l.params for l in info.layers) / total, bits
