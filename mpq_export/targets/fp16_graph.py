"""FP16 graph conversion for the tensorrt target.

TensorRT 10.12+/11 builds strongly typed networks: the precision of every tensor comes from the
graph (11.x has no FP16/INT8 builder flags), so the deployable graph itself must be FP16, with
DQ scales in FP16 (a DQ's output type is its scale's type). We use onnxruntime's maintained
float16 converter (onnxruntime.transformers.float16) rather than writing one; inputs and
outputs keep their FP32 type (keep_io_types) and numerically sensitive ops stay FP32 with casts
around them: normalisations (GroupNorm exports as InstanceNormalization), softmax, and the
sinusoidal timestep embedding. For that one, blocking Sin/Cos is not enough: their argument t * f
(t up to ~1000) is formed by a Mul, and in FP16 (spacing 0.5 at 1000) it moves sin/cos by up to
0.25; so every node upstream of a Sin/Cos stays FP32, and the converter's FP16 round trips between
FP32 nodes (and after FP32 graph inputs) are removed.
"""

from __future__ import annotations

# ops kept in FP32 besides the converter's own defaults
KEEP_FP32_OPS = ["InstanceNormalization", "LayerNormalization", "GroupNormalization", "Softmax",
                 "Sin", "Cos", "Exp", "Pow", "ReduceMean", "Sqrt", "Erf"]


FP16_MAX = 65504.0


def to_fp16_graph(model):
    """Return an FP16 copy of `model` (an onnx.ModelProto), FP32 at its inputs and outputs. A float weight
    beyond FP16's range is a one-line error naming it: the converter would clamp it to 65504 and the engine
    compute something else than the model."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    import onnx_graphsurgeon as gs

    from mpq_export.util.onnx_io import infer_shapes_without_weights

    # the converter's own shape inference serialises the whole model several times (GBs at SD size,
    # impossible past protobuf's 2 GB): the types it needs come from the graph alone
    infer_shapes_without_weights(model)
    _check_fp16_range(model)
    fp32_ops, fp32_nodes = list(DEFAULT_OP_BLOCK_LIST) + KEEP_FP32_OPS, _sinusoid_arguments(model.graph)
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=fp32_ops,
                                         node_block_list=fp32_nodes, disable_shape_infer=True)
    _drop_round_trips(converted.graph, set(fp32_ops), set(fp32_nodes))
    # the converter appends its input casts at the end of the node list: restore topological order,
    # in place (a graph-surgeon round trip would copy every weight once more)
    g = converted.graph
    from mpq_export.util.onnx_io import toposort_nodes

    ordered = toposort_nodes(list(g.node), {i.name for i in g.input} | {t.name for t in g.initializer})
    if ordered is None:  # subgraphs reading outer names: graph surgeon's full toposort
        graph = gs.import_onnx(converted)
        graph.toposort()
        out = gs.export_onnx(graph)
        out.ir_version = converted.ir_version
        return out
    nodes = [type(n)() for n in ordered]
    for new, old in zip(nodes, ordered):
        new.CopyFrom(old)
    del g.node[:]
    g.node.extend(nodes)
    return converted


def _check_fp16_range(model) -> None:
    import numpy as np
    from onnx import TensorProto, numpy_helper

    from mpq_export.util.errors import MPQError

    big = []
    for t in model.graph.initializer:
        if t.data_type != TensorProto.FLOAT or not (t.raw_data or t.float_data):
            continue  # quantized, or weights kept in their external file (read by the converter itself)
        a = numpy_helper.to_array(t)
        if a.size and float(np.abs(a).max()) > FP16_MAX:
            big.append((t.name, float(np.abs(a).max())))
    if big:
        name, v = max(big, key=lambda x: x[1])
        raise MPQError(f"{len(big)} float weight(s) exceed FP16's range (largest: {name}, |w| = {v:.3g} > {FP16_MAX:g}); "
                       f"the tensorrt target's graph is FP16: use --target onnxruntime (an FP32 graph), or rescale "
                       f"those weights in the model")


def _sinusoid_arguments(graph) -> list[str]:
    """Names of the nodes a Sin or Cos depends on (itself included): the timestep embedding's argument."""
    from mpq_export.util.onnx_io import producers_of

    producers = producers_of(graph)
    todo = [n for n in graph.node if n.op_type in ("Sin", "Cos")]
    seen: set[str] = set()
    while todo:
        n = todo.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        todo += [producers[i] for i in n.input if i in producers]
    return sorted(seen - {""})


def _drop_round_trips(graph, fp32_ops: set[str], fp32_nodes: set[str]) -> None:
    """Let FP32 readers of an FP32 tensor read it directly where the converter sends it through
    Cast(FP16) -> Cast(FP32), as it does for every tensor between two FP32 nodes and after every
    FP32 graph input: each such round trip rounds the value to FP16."""
    from onnx import TensorProto

    from mpq_export.util.onnx_io import consumers_of, producers_of

    float_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    producers, consumers = producers_of(graph), consumers_of(graph)

    def is_fp32(name: str) -> bool:
        p = producers.get(name)
        if p is None:
            return name in float_inputs
        if p.op_type == "Cast":
            return _cast_to(p) == TensorProto.FLOAT
        return p.op_type in fp32_ops or p.name in fp32_nodes

    for back in graph.node:
        there = producers.get(back.input[0]) if back.op_type == "Cast" else None
        if (there is None or _cast_to(back) != TensorProto.FLOAT or there.op_type != "Cast"
                or _cast_to(there) != TensorProto.FLOAT16 or not is_fp32(there.input[0])):
            continue
        for user in consumers.get(back.output[0], []):
            user.input[:] = [there.input[0] if i == back.output[0] else i for i in user.input]
    # casts nobody reads any more (graph outputs are read by the caller)
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in read]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def _cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)
