"""ONNX I/O shared by every stage: loading with user-facing errors, loading for editing at the Q/DQ opset,
saving with external data, and graph lookups. Weights of large models stay in their files
(read one tensor at a time): a > 2 GB proto is never serialised."""

from __future__ import annotations

import os

from mpq_export.util.errors import MPQError, require_path

# models whose weights pass this are written with one external .data file: the graph alone then loads
# in a moment (count, check) and no serialised copy of the weights is ever made (protobuf cannot
# serialise one message above 2 GB at all)
EXTERNAL_DATA_BYTES = 256 << 20

# metadata_props entries our exporter writes, so later stages know what the export assumed
SAMPLE_SIZE_KEY = "mpq_export.sample_size"  # "H,W" of the sample the UNet was configured for
SEQ_LEN_KEY = "mpq_export.seq_len"  # text-encoder sequence length of encoder_hidden_states
SOURCE_CLASS_KEY = "mpq_export.source_class"  # the diffusers class exported
DEFAULT_SEQ_LEN = 77  # CLIP's, when the file does not say


def opset_of(model) -> int:
    """The default-domain opset the model imports (0 when none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def producers_of(graph) -> dict:
    """tensor name -> the NodeProto that writes it."""
    return {o: n for n in graph.node for o in n.output}


def consumers_of(graph) -> dict[str, list]:
    """tensor name -> the NodeProtos that read it, in graph order."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return consumers


def weight_axes(op_type: str, node, rank: int) -> tuple[int, int]:
    """(output-channel axis, reduction axis) of the weight a Conv/ConvTranspose/MatMul/Gemm takes as its
    second input: where per-channel scales live and along which INT4 blocks run (-1: none). One table
    for the inspector and the TensorRT rule checker, so they cannot drift apart."""
    if op_type == "Conv":
        return 0, -1
    if op_type == "ConvTranspose":
        return 1, -1
    if op_type == "MatMul":  # weight is [K, N]
        return rank - 1, rank - 2
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return (0, 1) if trans_b else (1, 0)  # Gemm: B is [N, K] when transB else [K, N]


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


def external_data_problem(model, folder: str) -> str | None:
    """Why the external weight files of `model` (loaded without them) cannot be read from `folder`,
    or None when every file exists and is long enough for the tensors that point into it."""
    import os

    from onnx import external_data_helper

    needed: dict[str, int] = {}
    for t in model.graph.initializer:
        if external_data_helper.uses_external_data(t):
            info = external_data_helper.ExternalDataInfo(t)
            needed[info.location] = max(needed.get(info.location, 0), (info.offset or 0) + (info.length or 0))
    for loc in sorted(needed):
        full = os.path.join(folder, loc)
        if not os.path.isfile(full):
            return f"it keeps weights in {loc}, which is missing beside it; copy the .data file(s) along with the .onnx"
        if os.path.getsize(full) < needed[loc]:
            return (f"{full} is truncated ({os.path.getsize(full):,} bytes; the model reads up to {needed[loc]:,}); "
                    f"copy it again")
    return None


def toposort_nodes(nodes, available: set[str]) -> list | None:
    """The nodes (NodeProtos) in an order where each comes after the producers of its inputs, keeping
    the given order where it already holds; `available`: graph inputs and initializers. In place of a
    graph-surgeon round trip, which would copy every weight (GBs at Stable-Diffusion size). None when
    some input is never produced (a cycle, or a subgraph reading outer names): use a full toposort."""
    out, pending = [], list(nodes)
    avail = set(available) | {""}
    while pending:
        rest = []
        for n in pending:
            if all(i in avail for i in n.input):
                out.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            return None
        pending = rest
    return out


def read_external_tensor(tensor, base_dir: str):
    """The values (numpy) of an initializer kept in an external file, read without putting its bytes
    into `tensor`: protobuf keeps every byte set on a message until the whole model is freed."""
    import os

    from onnx import TensorProto, external_data_helper, numpy_helper

    info = external_data_helper.ExternalDataInfo(tensor)
    with open(os.path.join(base_dir, info.location), "rb") as f:
        f.seek(info.offset or 0)
        raw = f.read(info.length) if info.length else f.read()
    t = TensorProto()
    t.name, t.data_type = tensor.name, tensor.data_type
    t.dims.extend(tensor.dims)
    t.raw_data = raw
    return numpy_helper.to_array(t)


def iter_initializers(path: str, names: list[str]):
    """(name, values) of the named initializers of the model at `path`, in `names` order, one at a time:
    the proto is loaded once without external data, and each external tensor is read when its turn comes."""
    from onnx import external_data_helper, numpy_helper

    model = load_onnx(path, load_weights=False)
    base = os.path.dirname(os.path.abspath(path))
    inits = {t.name: t for t in model.graph.initializer}
    inits.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                  for a in n.attribute if a.name == "value"})  # weights folded into Constant nodes
    for n in names:
        t = inits[n]
        yield n, read_external_tensor(t, base) if external_data_helper.uses_external_data(t) else numpy_helper.to_array(t)


def infer_shapes_without_weights(model) -> None:
    """onnx shape inference on the graph with its large initializers left empty (shape and type only;
    small ones such as Reshape targets keep their values), its value_info written into `model`.
    onnx's own inference serialises the whole model several times: GBs at Stable-Diffusion size."""
    import onnx
    from onnx import external_data_helper

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    g = light.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    for t in model.graph.initializer:
        if tensor_nbytes(t) <= 4096 and not external_data_helper.uses_external_data(t):
            g.initializer.append(t)
        else:  # type and shape only, as a graph input would give them
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    inferred = onnx.shape_inference.infer_shapes(light)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)


QDQ_OPSET = 21  # INT4 and blocked DequantizeLinear
MIN_IR_VERSION = 10  # INT4 tensors


def load_onnx(path: str, load_weights: bool = True):
    """onnx.load with user-facing errors for missing and non-ONNX files."""
    import onnx

    path = require_path(path, "the model")
    if not os.path.exists(path):
        raise MPQError(f"model file not found: {path} (check the path)")
    if os.path.isdir(path):
        raise MPQError(f"{path} is a folder; give the .onnx file in it")
    try:
        model = onnx.load(path, load_external_data=load_weights)
    except FileNotFoundError as e:
        raise MPQError(f"{path} refers to external weights that are missing ({os.path.basename(str(e.filename or e))}); "
                       f"keep the .data file(s) beside the .onnx") from None
    except Exception as e:  # onnx raises DecodeError / google.protobuf errors, several types
        raise MPQError(f"{path} is not a readable ONNX model ({type(e).__name__}); give an .onnx file exported from your UNet") from None
    if not model.graph.node:
        raise MPQError(f"{path} holds no graph (empty or not an ONNX model); give an .onnx file exported from your UNet")
    name_nodes(model.graph)
    return model


def name_nodes(graph) -> None:
    """Give every unnamed or duplicate-named node a unique name (ONNX allows both; the stages look
    nodes up by name). Deterministic: the same file always gets the same names."""
    seen = {n.name for n in graph.node if n.name}
    used: set[str] = set()
    for i, n in enumerate(graph.node):
        if n.name and n.name not in used:
            used.add(n.name)
            continue
        base = f"{n.op_type}_{i}" if not n.name else f"{n.name}_{i}"
        name, k = base, 0
        while name in seen or name in used:
            k += 1
            name = f"{base}_{k}"
        n.name = name
        used.add(name)


def load_for_edit(path: str, load_weights: bool = True):
    """Load an ONNX model at opset >= 21 and IR >= 10, with its weights in memory unless `load_weights`
    is False (external weights then stay in their files: read_external_tensor)."""
    from onnx import external_data_helper, version_converter

    model = load_onnx(path, load_weights=False)  # convert the graph before pulling GBs of weights
    opset = opset_of(model)
    if opset < QDQ_OPSET:
        try:
            model = version_converter.convert_version(model, QDQ_OPSET)
        except Exception as e:
            raise MPQError(f"cannot convert {path} from opset {opset} to {QDQ_OPSET} for INT4 Q/DQ ({str(e)[:200]}); "
                           f"re-export the model at opset {QDQ_OPSET}") from None
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    base = os.path.dirname(os.path.abspath(path))
    if load_weights:
        external_data_helper.load_external_data_for_model(model, base)
    else:
        # torch's exporter stores every tensor over 1 KB of a > 2 GB model in a file of its own, Constant
        # nodes' values included; those are small and belong to the graph, which is written elsewhere: read
        # them in, or the new file would name data files that are not beside it
        for node in model.graph.node:
            for a in node.attribute:
                if a.type == a.TENSOR and external_data_helper.uses_external_data(a.t):
                    external_data_helper.load_external_data_for_tensor(a.t, base)
                    a.t.data_location = a.t.DEFAULT
                    del a.t.external_data[:]
    return model


def save_model(model, path: str) -> None:
    """Save (with one external .data file when large) and check the result from its path."""
    import onnx

    data_name = os.path.basename(path) + ".data"
    if weights_nbytes(model) > EXTERNAL_DATA_BYTES:  # and ByteSize() itself raises past 2 GB
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(os.path.join(os.path.dirname(path), data_name), 0o666 & ~mask)  # onnx writes it 0600
    else:
        onnx.save(model, path)
    onnx.checker.check_model(path)  # a path, not a proto: works beyond 2 GB
