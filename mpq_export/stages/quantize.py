"""quantize stage: write per-layer Q/DQ nodes (onnx-graphsurgeon) for a BitAllocation.

Each layer's format writes itself (formats/: its weight behind a DequantizeLinear, its input through its
input quantizer's Q/DQ, any extra nodes it needs) through the `_QDQWriter` here, which owns the graph
edits every format shares: one quantizer per activation tensor and kind, weight constants, and what the
target's runtime needs around them (zero points, one DequantizeLinear per consumer or shared, residual
Adds, conv outputs, the FP16 graph; targets/).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from mpq_export.core.model_info import ModelInfo, QuantLayer
from mpq_export.formats import Format, GraphView, LayerStorage, QuantizeSettings, count_layer_bits
from mpq_export.formats.inputs import FP8_INPUT, INT8_INPUT, InputQuantizer
from mpq_export.formats.weights import QuantizedWeight
from mpq_export.stages.act_ranges import ActivationRanges
from mpq_export.stages.allocate import BitAllocation
from mpq_export.stages.calibrate import CalibrationStats
from mpq_export.targets import Target, get_target
from mpq_export.util.errors import MPQError
from mpq_export.util.onnx_io import MIN_IR_VERSION, load_for_edit, load_onnx, read_external_tensor, save_model


@dataclass
class QuantizedModel:
    path: str
    target: str
    layer_storage: dict[str, LayerStorage] = field(default_factory=dict)  # layer name -> its storage
    act_scales: dict[str, float] = field(default_factory=dict)  # activation tensor -> INT8 scale written
    seconds: float = 0.0


def quantize_layer_weight(layer: QuantLayer, w: np.ndarray, fmt: Format, settings: QuantizeSettings,
                          cal=None) -> QuantizedWeight:
    """The weight of one layer in its format; `cal`: the layer's LayerCalibration (CalibrationStats.for_layer)
    or a bare H (with rounding 'gptq' the values minimise the output error under it)."""
    return fmt.quantize_weight(layer, w, settings, cal)


def quantize(info: ModelInfo, allocation: BitAllocation, ranges: ActivationRanges, out_path: str,
             settings: QuantizeSettings, target: str | Target, model=None,
             stats: CalibrationStats | None = None, weight_memo: dict | None = None) -> QuantizedModel:
    """Write the Q/DQ model for `allocation` on `target` to out_path (the caller makes it atomic).

    `ranges`: the activation thresholds (act_ranges.choose_ranges); each input quantizer reads the one it
    maps onto its grid. `stats`: the calibration, whose per-layer input statistics GPTQ rounding and the
    formats that transform a weight (smoothing, low-rank branches) read. `model`: the FP32 model already loaded by `load_for_edit` (not modified), to skip reloading when
    many variants of one model are written. `weight_memo`: a dict shared by calls that write the same
    allocation for several targets: each layer's weight is quantized once (GPTQ takes minutes per target
    at Stable-Diffusion size).
    """
    from onnx_graphsurgeon.logger import G_LOGGER

    # graph surgeon warns once per run that FP8 has no NumPy type (it keeps the ONNX type, as intended)
    severity, G_LOGGER.severity = G_LOGGER.severity, max(G_LOGGER.severity, G_LOGGER.ERROR)
    try:
        return _quantize(info, allocation, ranges, out_path, settings, get_target(target), model, stats, weight_memo)
    finally:
        G_LOGGER.severity = severity


def _quantize(info, allocation, ranges, out_path, settings, target, model, stats, weight_memo):
    t0 = time.perf_counter()
    settings, _ = target.resolve_quantize_settings(settings)
    target.check_quantize_settings(settings)
    # weights kept in external files (large models) are read one layer at a time, never all at once
    model = model if model is not None else load_for_edit(info.path, load_weights=False)
    writer = _QDQWriter(model, os.path.dirname(os.path.abspath(info.path)), settings, target, ranges,
                        QuantizedModel(path=out_path, target=target.name))
    for layer, fmt in zip(info.layers, allocation.formats):
        if layer.name != allocation.layer_names[len(writer.result.layer_storage)]:
            raise MPQError("internal: allocation and model layers are out of order")
        if not target.stores(layer.op_type, fmt):
            raise MPQError(f"format {fmt.name} of layer {layer.name} ({layer.op_type}) is not stored by the "
                           f"{target.name} target; allocate for target '{target.name}'")
        writer.quantize_layer(layer, fmt, stats.for_layer(layer, ranges) if stats is not None else None, weight_memo)
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
    """Q/DQ edits of one FP32 graph (onnx-graphsurgeon): the helpers formats write themselves with
    (`weight_dq`, `quantized_activation`, `quantize_output`, `add_node`), and the graph-wide edits."""

    def __init__(self, model, weights_dir: str, settings: QuantizeSettings, target: Target,
                 ranges: ActivationRanges, result: QuantizedModel):
        import onnx_graphsurgeon as gs

        self.graph = gs.import_onnx(model)
        self.nodes = {n.name: n for n in self.graph.nodes}
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.weights_dir, self.settings, self.ranges, self.result = weights_dir, settings, ranges, result
        self.target = target
        self.float_dtype = np.float32  # the edits are made on the FP32 graph; target.finalize converts it
        self.fixed_thresholds: dict[tuple[str, str], float] = {}  # (tensor, quantizer) -> a threshold known a priori
        # keyed by (tensor, quantizer): one tensor read by an INT8 layer and an FP8 layer gets a quantizer of each
        self.act_q: dict[tuple[str, str], tuple] = {}  # -> its (QuantizeLinear output, scale, zero point)
        self.act_qdq: dict = {}  # -> its shared DequantizeLinear output (tensorrt)
        self.dq_count: dict[tuple[str, str], int] = {}

    def quantizes_conv_outputs(self) -> bool:
        return self.target.quantizes_conv_outputs(self.settings)

    def add_node(self, op: str, name: str, inputs: list, outputs: list, attrs: dict | None = None):
        import onnx_graphsurgeon as gs

        self.graph.nodes.append(gs.Node(op, name=name, inputs=inputs, outputs=outputs, attrs=attrs or {}))

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

    def weight_dq(self, layer: QuantLayer, shape: tuple, values, storage: str, qw: QuantizedWeight):
        """The stored weight constant, its scale and the DequantizeLinear that restores it (the tensor the
        layer now reads); INT4 convolution weights are widened by a Cast where the target asks for it."""
        import onnx_graphsurgeon as gs
        from onnx import TensorProto

        qc = gs.Constant(f"{layer.name}.weight_quantized", values)
        sc = gs.Constant(f"{layer.name}.weight_scale", qw.scale.astype(self.float_dtype))
        attrs = {"axis": qw.axis}
        if qw.block_size is not None:
            attrs["block_size"] = qw.block_size
        if self.target.widen_int4_conv_weights and storage == "int4" and layer.op_type == "Conv":
            # a Cast to INT8, folded once when a session loads the model, lets the runtime's integer
            # convolution take the layer while the file keeps 4-bit storage
            w8 = gs.Variable(f"{layer.name}.weight_int8", dtype=np.int8, shape=list(shape))
            self.add_node("Cast", f"{layer.name}.weight_Cast", [qc], [w8], {"to": int(TensorProto.INT8)})
            qc = w8
        wdq = gs.Variable(f"{layer.name}.weight_dequantized", dtype=self.float_dtype, shape=list(shape))
        self.add_node("DequantizeLinear", f"{layer.name}.weight_DequantizeLinear", [qc, sc], [wdq], attrs)
        return wdq

    def quantized_activation(self, name: str, tensor, quantizer: InputQuantizer = INT8_INPUT):
        """The tensor through its per-tensor Q/DQ of `quantizer`'s kind; one Q per tensor and kind."""
        import onnx_graphsurgeon as gs

        key = (name, quantizer.name)
        if key in self.act_qdq:
            return self.act_qdq[key]
        tag = quantizer.tag
        if key not in self.act_q:
            try:
                threshold = self.fixed_thresholds[key] if key in self.fixed_thresholds \
                    else quantizer.threshold(self.ranges, name)
            except KeyError:
                raise MPQError(f"internal: no calibrated range for activation '{name}'") from None
            scale = quantizer.scale(threshold)
            zp_values = quantizer.zero_point(self.target)
            q_dtype = zp_values.dtype if isinstance(zp_values, np.ndarray) else _onnx_type(zp_values)
            self.result.act_scales[name + tag] = scale
            s = gs.Constant(f"{name}_act_scale{tag}", np.array(scale, dtype=self.float_dtype))
            zp = gs.Constant(f"{name}_act_zero_point{tag}", zp_values)
            q = gs.Variable(f"{name}_quantized{tag}", dtype=q_dtype, shape=tensor.shape)
            self.add_node("QuantizeLinear", f"{name}_QuantizeLinear{tag}", [tensor, s, zp], [q])
            self.act_q[key] = (q, s, zp)
        q, s, zp = self.act_q[key]
        i = self.dq_count[key] = self.dq_count.get(key, -1) + 1
        suffix = tag + (f"_{i}" if i else "")
        dq = gs.Variable(f"{name}_dequantized{suffix}", dtype=tensor.dtype, shape=tensor.shape)
        self.add_node("DequantizeLinear", f"{name}_DequantizeLinear{suffix}", [q, s, zp], [dq])
        if not self.target.dq_per_consumer:
            self.act_qdq[key] = dq
        return dq

    def quantize_output(self, name: str, node) -> None:
        """INT8 Q/DQ on a layer's output, keeping the output tensor's name for its consumers."""
        import onnx_graphsurgeon as gs

        if (name, INT8_INPUT.name) in self.act_q:  # already quantized where a consumer reads it: leave it float
            return
        y = node.outputs[0]
        raw = gs.Variable(f"{name}_before_output_quantizer", dtype=y.dtype, shape=y.shape)
        node.outputs[0] = raw
        dq = self.quantized_activation(name, raw)
        dq.inputs[0].outputs[0] = y  # the DequantizeLinear now produces the original tensor

    def quantize_layer(self, layer: QuantLayer, fmt: Format, cal, weight_memo: dict | None) -> None:
        """The layer in format `fmt`, written by the format itself."""
        node = self.nodes.get(layer.node_name)
        if node is None:
            raise MPQError(f"internal: node {layer.node_name} vanished after the opset conversion")
        if not fmt.quantized:
            self.result.layer_storage[layer.name] = fmt.write(self, layer, node, None, None)
            return
        st = self.settings
        w = self.weight_values(node.inputs[1])
        key = (layer.name, fmt.name, st.rounding, st.block_size, st.clip_search, st.clip_grid)
        qw = weight_memo.get(key) if weight_memo is not None else None
        if qw is None:
            qw = quantize_layer_weight(layer, w, fmt, st, cal)
            if weight_memo is not None:
                weight_memo[key] = qw
        self.result.layer_storage[layer.name] = fmt.write(self, layer, node, w, qw)

    def smoothed_input(self, layer: QuantLayer, tensor, inv_s: np.ndarray, threshold: float):
        """The layer's input times 1/s (a per-channel Mul), through an INT8 Q/DQ of its own at `threshold`
        (formats/smooth.py): each smoothed layer has its own factors, so its own quantized tensor."""
        import onnx_graphsurgeon as gs

        name = f"{layer.name}.input_smoothed"
        smoothed = gs.Variable(name, dtype=tensor.dtype, shape=tensor.shape)
        self.add_node("Mul", f"{layer.name}.input_smoothing_Mul",
                      [tensor, gs.Constant(f"{layer.name}.input_smoothing", inv_s.astype(self.float_dtype))],
                      [smoothed])
        self.fixed_thresholds[(name, INT8_INPUT.name)] = threshold
        return self.quantized_activation(name, smoothed)

    def add_low_rank_branch(self, layer: QuantLayer, node, a: np.ndarray, b: np.ndarray) -> None:
        """y = layer(x) + (x A) B, the Add producing the layer's original output tensor (formats/lowrank.py)."""
        import onnx_graphsurgeon as gs

        if node.op == "Gemm" and node.attrs.get("transA", 0):
            raise MPQError(f"internal: layer {layer.name} is a Gemm with transA; no low-rank branch")
        x, y = node.inputs[0], node.outputs[0]
        xa = gs.Variable(f"{layer.name}.lowrank_xa", dtype=y.dtype)
        xab = gs.Variable(f"{layer.name}.lowrank_xab", dtype=y.dtype)
        main = gs.Variable(f"{layer.name}.int4_output", dtype=y.dtype, shape=y.shape)
        node.outputs[0] = main
        self.add_node("MatMul", f"{layer.name}.lowrank_A_MatMul",
                      [x, gs.Constant(f"{layer.name}.lowrank_A", a.astype(self.float_dtype))], [xa])
        self.add_node("MatMul", f"{layer.name}.lowrank_B_MatMul",
                      [xa, gs.Constant(f"{layer.name}.lowrank_B", b.astype(self.float_dtype))], [xab])
        self.add_node("Add", f"{layer.name}.lowrank_Add", [main, xab], [y])

    def quantize_attention_matmul(self, mm) -> None:
        """FP8 Q/DQ on both inputs of an attention MatMul (a Softmax output's max is 1)."""
        node = self.nodes[mm.node_name]
        for idx, tname in enumerate(mm.inputs):
            if idx == mm.softmax_input:
                self.fixed_thresholds[(tname, FP8_INPUT.name)] = 1.0
            elif tname not in self.ranges.observed_max:
                raise MPQError(f"internal: no calibrated range for attention input '{tname}' (calibrate with "
                               f"attention_inputs)")
            node.inputs[idx] = self.quantized_activation(tname, node.inputs[idx], FP8_INPUT)

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


def _onnx_type(lazy_values):
    """The ONNX element type of a LazyValues constant (graph surgeon keeps types it has no NumPy type for)."""
    return lazy_values.tensor.data_type


def count_weight_bits(path: str, info: ModelInfo) -> tuple[float, dict[str, float]]:
    """Average weight bits of the quantizable layers counted from the file itself.

    Each layer is counted by the format kind that recognises how the file realises it (formats/): a weight
    behind a DequantizeLinear counts its stored width (INT4 4, INT8 and FP8 8), a float weight 16, as the
    budget does. This is the number the budget bounds.
    """
    model = load_onnx(path, load_weights=False)
    view = GraphView(model)
    by_name = {n.name: n for n in model.graph.node}
    stored = {l.name: count_layer_bits(view, by_name[l.node_name], l) for l in info.layers}
    return sum(stored.values()) / sum(l.params for l in info.layers), \
        {l.name: stored[l.name] / l.params for l in info.layers}
