"""Small ONNX helpers shared by the stages."""

from __future__ import annotations

# protobuf cannot serialise one message above 2 GB: larger models are written with external data,
# and nothing may call ModelProto.ByteSize() / SerializeToString() on them
PROTO_LIMIT = 1_800_000_000


def tensor_nbytes(t) -> int:
    """Bytes a TensorProto holds in memory (raw or typed fields), without serialising it."""
    if t.raw_data:
        return len(t.raw_data)
    return 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data) + len(t.double_data)
                                                          + len(t.uint64_data)) + sum(len(s) for s in t.string_data)


def weights_nbytes(model) -> int:
    """Bytes of the initializers and Constant-node tensors held in memory by `model`."""
    total = sum(tensor_nbytes(t) for t in model.graph.initializer)
    for n in model.graph.node:
        if n.op_type == "Constant":
            total += sum(tensor_nbytes(a.t) for a in n.attribute if a.HasField("t"))
    return total


def too_big_to_serialise(model) -> bool:
    return weights_nbytes(model) > PROTO_LIMIT
