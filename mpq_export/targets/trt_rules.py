"""`mpq-export check`: a static checker of the rules TensorRT sets for Q/DQ graphs (docs/design.md).

Each violation names the offending node. Rules (strongly typed networks, TensorRT 10.12+ / 11.x):
 1. zero points absent or 0;
 2. scales positive, finite build-time constants, FP16 (the graph is FP16; a DQ's output type is its scale's);
 3. activations per tensor (scalar scale), INT8 or FP8 E4M3 (FLOAT8E4M3FN, opset >= 19);
 4. per-channel only on weights, on the output-channel axis of the consuming op
    (Conv 0, ConvTranspose 1, MatMul [K, N] 1, Gemm 0 with transB else 1); INT4 blocks along K;
 5. INT4 only as weight-only DQ feeding MatMul/Gemm (no INT4 convolution), opset >= 21, IR >= 10,
    an even element count, one blocked axis;
 6. no INT32 (bias) DequantizeLinear;
 7. both inputs of a residual Add quantized when the Add feeds an INT8-input conv;
 8. attention BMMs (activation x activation MatMul) over 512 tokens not quantized to INT8 (FP8 on both
    inputs is TensorRT's FP8 attention, --fp8-attention);
 9. FP8 weights per tensor or per channel (no blocks), read by a layer whose input is FP8 too: TensorRT's
    FP8 layers take FP8 on both sides (its FP8 scheme, "Quantization Schemes", is weights and activations;
    weight-only quantization is INT4/INT8), and an INT8 input with FP8 weights is no kernel at all.
FP8 Q/DQ also needs a GPU of compute capability 8.9 or later (Ada, Hopper, Blackwell), which a file
cannot show: `--gpu` decides whether they are written (targets/gpus.py).
"""

from __future__ import annotations

import os

import numpy as np

from mpq_export.util.errors import MPQError
from mpq_export.util.onnx_io import consumers_of, external_data_problem, opset_of, producers_of, weight_axes

MAX_INT8_ATTENTION_TOKENS = 512


def check_model(path: str) -> list[str]:
    """All TensorRT rule violations in the Q/DQ model at `path` (empty list: OK)."""
    from mpq_export.util.onnx_io import load_onnx

    model = load_onnx(path, load_weights=False)
    base = os.path.dirname(os.path.abspath(path))
    problem = external_data_problem(model, base)
    if problem:
        raise MPQError(f"{path}: {problem}")
    view = _GraphView(model, base)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    out = [] if qdq else ["graph: no QuantizeLinear/DequantizeLinear nodes: not a Q/DQ model"]
    for n in qdq:
        out += _qdq_node_problems(view, n)
    out += _residual_add_problems(view)
    out += _attention_bmm_problems(view, path)
    return out


class _GraphView:
    """What the rules look up in a graph: constants (initializers, Constant nodes, external data
    loaded on demand), producers and consumers."""

    def __init__(self, model, base: str):
        self.model, self.base = model, base
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.const_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
        self.producers, self.consumers = producers_of(g), consumers_of(g)
        self.opset = opset_of(model)

    def const(self, name: str):
        """(TensorProto or None, numpy value or None) of a constant input."""
        import onnx
        from onnx import numpy_helper

        if name in self.inits:
            t = self.inits[name]
            if onnx.external_data_helper.uses_external_data(t):
                onnx.external_data_helper.load_external_data_for_tensor(t, self.base)
            return t, numpy_helper.to_array(t)
        if name in self.const_nodes:
            t = next(a.t for a in self.const_nodes[name].attribute if a.name == "value")
            return t, numpy_helper.to_array(t)
        return None, None


def _where(n) -> str:
    return f"node {n.name or '(unnamed)'} ({n.op_type})"


def _qdq_node_problems(view: _GraphView, n) -> list[str]:
    """Rules 1 to 6 for one QuantizeLinear / DequantizeLinear."""
    import onnx

    out = []
    # 1. zero point
    if len(n.input) > 2 and n.input[2]:
        _, zp = view.const(n.input[2])
        if zp is None:
            out.append(f"{_where(n)}: zero point '{n.input[2]}' is not a constant")
        elif np.any(zp.astype(np.float64) != 0):
            out.append(f"{_where(n)}: zero point is not 0 (TensorRT supports symmetric quantization only)")
    # 2. scale
    st, scale = view.const(n.input[1])
    if scale is None:
        return out + [f"{_where(n)}: scale '{n.input[1]}' is not a build-time constant"]
    if not np.all(np.isfinite(scale.astype(np.float64))) or np.any(scale.astype(np.float64) <= 0):
        out.append(f"{_where(n)}: scale has non-positive or non-finite values")
    if st.data_type != onnx.TensorProto.FLOAT16:
        out.append(f"{_where(n)}: scale is {onnx.TensorProto.DataType.Name(st.data_type)}, not FLOAT16 "
                   f"(the graph must be FP16 for a strongly typed TensorRT network)")
    x_t, x = view.const(n.input[0]) if n.op_type == "DequantizeLinear" else (None, None)
    if n.op_type == "QuantizeLinear" or x_t is None:
        # 3. activations: per tensor, INT8 or FP8 E4M3
        if scale.size != 1:
            out.append(f"{_where(n)}: activation scale has {scale.size} values; activations must be per tensor")
        if n.op_type == "QuantizeLinear":
            zp_t, _ = view.const(n.input[2]) if len(n.input) > 2 and n.input[2] else (None, None)
            dt = zp_t.data_type if zp_t is not None else next(
                (a.i for a in n.attribute if a.name == "output_dtype"), onnx.TensorProto.UINT8)
            if dt not in (onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN):
                out.append(f"{_where(n)}: activations quantize to {onnx.TensorProto.DataType.Name(dt)}, not INT8 "
                           f"or FLOAT8E4M3FN")
            if dt == onnx.TensorProto.FLOAT8E4M3FN and view.opset < 19:
                out.append(f"{_where(n)}: FP8 Q/DQ needs opset >= 19 (model has {view.opset})")
        return out
    # 6. weights: no INT32 (bias) dequantization
    if x_t.data_type == onnx.TensorProto.INT32:
        return out + [f"{_where(n)}: INT32 DequantizeLinear (bias): TensorRT wants float biases"]
    return out + _weight_problems(view, n, x_t, x, scale)


def _weight_problems(view: _GraphView, n, x_t, x: np.ndarray, scale: np.ndarray) -> list[str]:
    """Rules 4 and 5 for a weight DequantizeLinear: axes, blocks, where INT4 may go."""
    import onnx

    out = []
    block = next((a.i for a in n.attribute if a.name == "block_size"), 0)
    axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
    rank = x.ndim
    axis = axis % rank if rank else 0
    is_int4 = x_t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
    is_fp8 = x_t.data_type == onnx.TensorProto.FLOAT8E4M3FN
    if is_fp8 and block:
        out.append(f"{_where(n)}: FP8 weights with blocks; TensorRT's FP8 weights are per tensor or per channel")
    if is_fp8 and view.opset < 19:
        out.append(f"{_where(n)}: FP8 Q/DQ needs opset >= 19 (model has {view.opset})")
    for u in view.consumers.get(n.output[0], []):
        if u.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm") or list(u.input).index(n.output[0]) != 1:
            continue
        ch_axis, blk_axis = weight_axes(u.op_type, u, rank)
        if is_int4 and u.op_type in ("Conv", "ConvTranspose"):
            out.append(f"{_where(u)}: INT4 weight on a {u.op_type}; TensorRT has no INT4 convolution "
                       f"(store the 4-bit values as INT8)")
        if block:
            if blk_axis < 0 or axis != blk_axis % rank:
                out.append(f"{_where(n)}: blocked on axis {axis}, expected {blk_axis % rank if blk_axis >= 0 else 'none'} "
                           f"(K of the {u.op_type} weight)")
        elif scale.size > 1 and axis != ch_axis % rank:
            out.append(f"{_where(n)}: per-channel axis {axis}, expected {ch_axis % rank} for a {u.op_type} weight")
        if x_t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN):  # 9. input and weight agree
            in_type = _input_element(view, u.input[0])
            want = x_t.data_type
            if in_type is not None and in_type != want:
                out.append(f"{_where(u)}: {onnx.TensorProto.DataType.Name(want)} weights with a "
                           f"{onnx.TensorProto.DataType.Name(in_type)} input; quantize both to one type")
            elif in_type is None and is_fp8:
                out.append(f"{_where(u)}: FP8 weights with a float input; TensorRT runs FP8 weights with FP8 "
                           f"inputs only (quantize the input to FP8, or store the weights as INT8 or INT4)")
        if u.op_type in ("MatMul", "Gemm") and is_int4:
            for j in u.input[:1]:
                p = view.producers.get(j)
                if p is not None and p.op_type == "DequantizeLinear":
                    out.append(f"{_where(u)}: INT4 weights are weight-only in TensorRT; the activation input is quantized too")
    if is_int4:
        if view.opset < 21:
            out.append(f"{_where(n)}: INT4 needs opset >= 21 (model has {view.opset})")
        if view.model.ir_version < 10:
            out.append(f"{_where(n)}: INT4 needs IR version >= 10 (model has {view.model.ir_version})")
        if x.size % 2:
            out.append(f"{_where(n)}: INT4 tensor with an odd element count ({x.size})")
    if block:
        differing = [d for d in range(rank) if scale.shape[d] != x.shape[d]]
        if len(differing) != 1:
            out.append(f"{_where(n)}: block quantization must block exactly one axis (scale {scale.shape}, weight {x.shape})")
    return out


def _input_element(view: _GraphView, name: str) -> int | None:
    """The quantized type of an activation reaching a layer through Q -> DQ (None: float)."""
    dq = view.producers.get(name)
    q = view.producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear":
        return None
    zp_t, _ = view.const(q.input[2]) if len(q.input) > 2 and q.input[2] else (None, None)
    return zp_t.data_type if zp_t is not None else None


def _residual_add_problems(view: _GraphView) -> list[str]:
    """Rule 7: a residual Add feeding an INT8-input conv (through at most a constant Mul/Div) has both
    inputs quantized."""
    import onnx

    out = []
    producers = view.producers
    for n in view.model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose"):
            continue
        p = producers.get(n.input[0])
        if p is None or p.op_type != "DequantizeLinear":
            continue
        if _input_element(view, n.input[0]) == onnx.TensorProto.FLOAT8E4M3FN:
            continue  # the documented residual fusion is INT8's (TensorRT, "Q/DQ Layer-Placement Recommendations")
        q = producers.get(p.input[0])
        src = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None
        for _ in range(3):
            node = producers.get(src) if src else None
            if node is None:
                break
            if node.op_type in ("Div", "Mul") and view.const(node.input[1])[1] is not None:
                src = node.input[0]
                continue
            if node.op_type == "Add" and all(view.const(i)[1] is None for i in node.input):
                for i in node.input:
                    pi = producers.get(i)
                    if pi is None or pi.op_type != "DequantizeLinear":
                        out.append(f"{_where(node)}: residual Add feeding quantized {n.name} has an unquantized input '{i}'")
            break
    return out


def _attention_bmm_problems(view: _GraphView, path: str) -> list[str]:
    """Rule 8: no quantized activation x activation MatMul over MAX_INT8_ATTENTION_TOKENS tokens."""
    import onnx

    shapes = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(onnx.load(path, load_external_data=False))
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    except Exception:  # shape inference is best effort here
        pass
    producers, out = view.producers, []

    def is_weight(i: str) -> bool:  # a constant, or a constant behind a DequantizeLinear
        p = producers.get(i)
        return view.const(i)[1] is not None or (
            p is not None and p.op_type == "DequantizeLinear" and view.const(p.input[0])[1] is not None)

    for n in view.model.graph.node:
        if n.op_type != "MatMul" or any(is_weight(i) for i in n.input):
            continue
        if all(_input_element(view, i) == onnx.TensorProto.FLOAT8E4M3FN for i in n.input):
            continue  # FP8 on both sides: TensorRT's FP8 attention (the token rule is INT8's)
        if any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input):
            dims = [shapes.get(i) for i in n.input]
            tokens = max([d[-2] or 0 for d in dims if d and len(d) >= 2] or [0])
            if tokens == 0 or tokens > MAX_INT8_ATTENTION_TOKENS:
                out.append(f"{_where(n)}: quantized attention BMM with {tokens or 'unknown'} tokens; "
                           f"keep BMMs over {MAX_INT8_ATTENTION_TOKENS} tokens in FP16 (INT8 is slower there)")
    return out
