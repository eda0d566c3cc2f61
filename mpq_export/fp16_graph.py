"""FP16 graph conversion for the tensorrt target.

TensorRT 10.12+/11 builds strongly typed networks: the precision of every tensor comes from the
graph (11.x has no FP16/INT8 builder flags), so the deployable graph itself must be FP16, with
DQ scales in FP16 (a DQ's output type is its scale's type). We use onnxruntime's maintained
float16 converter (onnxruntime.transformers.float16) rather than writing one; inputs and
outputs keep their FP32 type (keep_io_types) and numerically sensitive ops stay FP32 with casts
around them: normalisations (GroupNorm exports as InstanceNormalization), softmax, and the
sinusoidal timestep embedding (sin/cos/exp of arguments up to ~1000 lose precision in FP16).
"""

from __future__ import annotations

# ops kept in FP32 besides the converter's own defaults
KEEP_FP32_OPS = ["InstanceNormalization", "LayerNormalization", "GroupNormalization", "Softmax",
                 "Sin", "Cos", "Exp", "Pow", "ReduceMean", "Sqrt", "Erf"]


def to_fp16_graph(model):
    """Return an FP16 copy of `model` (an onnx.ModelProto), FP32 at its inputs and outputs."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # the converter's shape inference serialises the model: impossible past protobuf's 2 GB
    import onnx_graphsurgeon as gs

    from mpq_export.onnx_utils import too_big_to_serialise

    too_big = too_big_to_serialise(model)  # ByteSize() itself raises past 2 GB
    converted = convert_float_to_float16(model, keep_io_types=True,
                                         op_block_list=list(DEFAULT_OP_BLOCK_LIST) + KEEP_FP32_OPS,
                                         disable_shape_infer=too_big)
    # the converter appends its input casts at the end of the node list: restore topological order,
    # in place (a graph-surgeon round trip would copy every weight once more)
    g = converted.graph
    from mpq_export.onnx_utils import toposort_nodes

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
