"""inspect stage: find the model's inputs and every quantizable layer of an ONNX UNet.

A quantizable layer is a Conv / ConvTranspose / MatMul / Gemm whose weight is a constant
(an initializer or a Constant node). Attention's activation x activation MatMuls have no
constant operand and are not layers. Layer names are module paths
(`down_blocks.0.resnets.0.conv1`), recovered from whatever the exporter left behind.
"""

from __future__ import annotations

import ast
import os
from dataclasses import replace

import numpy as np

from mpq_export.core.model_info import AttentionMatMul, InputSpec, ModelInfo, QuantLayer, ResidualAdd
from mpq_export.util.errors import MPQError
from mpq_export.util.onnx_io import SAMPLE_SIZE_KEY, load_onnx, opset_of, producers_of, weight_axes

QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# ops that mark a model as quantized already (ONNX Q/DQ, onnxruntime's integer and INT4 kernels)
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                 "ConvInteger", "MatMulNBits", "DynamicQuantizeLinear")
TIMESTEP_NAMES = ("timestep", "timesteps", "t", "time", "sigma")


def _dim(d) -> int | str | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or None


def _input_spec(vi) -> InputSpec:
    from onnx import helper

    tt = vi.type.tensor_type
    shape = tuple(_dim(d) for d in tt.shape.dim)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    return InputSpec(vi.name, shape, dtype)


def _module_path(node, weight_name: str) -> str:
    # 1. initializer names survive both torch exporters: "m.down_blocks.0.resnets.0.conv1.weight"
    if weight_name.endswith(".weight"):
        return weight_name[: -len(".weight")]
    # 2. dynamo exporter: the module path sits in node metadata
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [s for s in ast.literal_eval(p.value) if s]
            except (ValueError, SyntaxError):
                scopes = []
            # ['', 'm', 'm.down_blocks.1', ..., 'm.down_blocks.1.attentions.0.to_q', 'linear_4']: the last
            # entry names the op, the one before is the module's full path (older torch: relative names)
            modules = scopes[:-1]
            if modules:
                cumulative = all(b.startswith(a + ".") for a, b in zip(modules, modules[1:]))
                return modules[-1] if cumulative else ".".join(modules)
    # 3. TorchScript exporter: node names are module paths, "/m/down_blocks.1/attentions.0/to_q/MatMul"
    if node.name.startswith("/") and node.name.count("/") >= 2:
        return ".".join(node.name.strip("/").split("/")[:-1])
    return node.name or weight_name


def _strip_common_prefix(names: list[str]) -> list[str]:
    """Drop a leading component every name shares (the export wrapper's attribute, e.g. 'm.')."""
    while names and all("." in n for n in names):
        head = {n.split(".", 1)[0] for n in names}
        if len(head) != 1 or len(names) < 2:
            break
        names = [n.split(".", 1)[1] for n in names]
    return names


def _conv_geometry(node, wshape) -> tuple:
    if node.op_type != "Conv" or len(wshape) != 4:
        return ()
    a = {x.name: x for x in node.attribute}
    if "auto_pad" in a and a["auto_pad"].s not in (b"", b"NOTSET"):
        return ()
    strides = tuple(a["strides"].ints) if "strides" in a else (1, 1)
    pads = tuple(a["pads"].ints) if "pads" in a else (0, 0, 0, 0)
    dil = tuple(a["dilations"].ints) if "dilations" in a else (1, 1)
    group = a["group"].i if "group" in a else 1
    return (strides, pads, dil, group)


def inspect_model(path: str, sample_name: str | None = None, timestep_name: str | None = None) -> ModelInfo:
    """Read an ONNX UNet (weights not loaded) and describe its inputs and quantizable layers."""
    from onnx import external_data_helper

    model = load_onnx(path, load_weights=False)
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [_input_spec(i) for i in graph.input if i.name not in init_names]
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    for n in graph.node:  # weights stored as Constant nodes
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = tuple(a.t.dims)
    if not inputs:
        raise MPQError(f"{path} has no inputs; export the UNet with sample and timestep inputs")
    quantized = sum(n.op_type in QUANTIZED_OPS for n in graph.node)
    if quantized:  # its weights sit behind DequantizeLinear: no layer would be found, and none should be
        raise MPQError(f"{path} is already quantized ({quantized} Q/DQ or integer nodes); give the FP32 model it was "
                       f"made from")

    sample, timestep = _pick_inputs(path, inputs, sample_name, timestep_name)
    conditioning = [i for i in inputs if i.name not in (sample.name, timestep.name)]
    layers = _find_layers(path, graph, shapes)

    residual = _residual_adds(graph, shapes, layers)
    attention = _attention_matmuls(graph, shapes)
    meta = {p.key: p.value for p in model.metadata_props}
    sample_size = None
    if isinstance(sample.shape[2], int) and isinstance(sample.shape[3], int) and sample.shape[2] > 0:
        sample_size = (sample.shape[2], sample.shape[3])
    elif SAMPLE_SIZE_KEY in meta:
        h, w = (int(v) for v in meta[SAMPLE_SIZE_KEY].split(","))
        sample_size = (h, w)
    opset = opset_of(model)
    return ModelInfo(path=os.path.abspath(path), sample=sample, timestep=timestep, conditioning=conditioning,
                     output=graph.output[0].name, layers=layers, opset=opset, sample_size=sample_size,
                     has_external_data=any(external_data_helper.uses_external_data(t) for t in graph.initializer),
                     metadata=meta, residual_adds=residual, attention_matmuls=attention)


def _pick_inputs(path: str, inputs: list, sample_name: str | None, timestep_name: str | None):
    """(sample, timestep) input specs: the named ones, else detected by name and shape."""
    def pick(explicit, predicate, role):
        if explicit:
            found = [i for i in inputs if i.name == explicit]
            if not found:
                raise MPQError(f"--{role}-name '{explicit}' is not an input of {path} (inputs: {', '.join(i.name for i in inputs)})")
            return found[0]
        for i in inputs:
            if predicate(i):
                return i
        return None

    sample = pick(sample_name, lambda i: i.name == "sample", "sample") or pick(
        None, lambda i: len(i.shape) == 4 and i.dtype.startswith("float"), "sample")
    if sample is None:
        raise MPQError(f"{path} has no 4-D float input for the noisy sample; name it with --sample-name")
    if len(sample.shape) != 4 or not sample.dtype.startswith("float"):  # a named input is held to the same rule
        raise MPQError(f"--sample-name '{sample.name}' is a rank-{len(sample.shape)} {sample.dtype} input; the noisy "
                       f"sample is a 4-D float input [batch, channels, height, width]: name that one")
    if sample.dtype != "float32":
        raise MPQError(f"{path} takes a {sample.dtype} sample; mpq-export quantizes FP32 models (the tensorrt target "
                       f"makes the FP16 graph itself): give the FP32 export")
    timestep = pick(timestep_name, lambda i: i.name.lower() in TIMESTEP_NAMES, "timestep") or pick(
        None, lambda i: "timestep" in i.name.lower() and len(i.shape) <= 1, "timestep")
    if timestep is None:
        raise MPQError(
            f"{path} has no timestep-like input (inputs: {', '.join(i.name for i in inputs)}); "
            "this tool quantizes diffusion denoisers, which take (sample, timestep, ...): name it with --timestep-name")
    if timestep.name == sample.name:
        raise MPQError(f"'{sample.name}' is named as both the sample and the timestep; give the two inputs' names")
    if len(timestep.shape) > 1 or not (timestep.dtype.startswith(("float", "int"))):
        raise MPQError(f"--timestep-name '{timestep.name}' is a rank-{len(timestep.shape)} {timestep.dtype} input; the "
                       f"timestep is a number per sample (a scalar or [batch]): name that input")
    return sample, timestep


def _find_layers(path: str, graph, shapes: dict) -> list[QuantLayer]:
    """Every Conv/ConvTranspose/MatMul/Gemm with a constant weight, named by its module path."""
    raw = []
    for node in graph.node:
        if node.op_type not in QUANTIZABLE_OPS or len(node.input) < 2:
            continue
        act, weight = node.input[0], node.input[1]
        if node.op_type == "MatMul" and act in shapes and weight not in shapes:
            continue  # constant x activation MatMul: not a weight layer we handle
        if weight not in shapes or act in shapes:
            continue  # activation x activation (attention BMMs) or no constant weight
        wshape = shapes[weight]
        if node.op_type in ("MatMul", "Gemm") and len(wshape) != 2:
            continue
        out_axis, red_axis = weight_axes(node.op_type, node, len(wshape))
        raw.append((node, act, weight, wshape, out_axis, red_axis))
    if not raw:
        raise MPQError(f"{path} has no quantizable layers (Conv/ConvTranspose/MatMul/Gemm with constant weights)")

    names = _strip_common_prefix([_module_path(n, w) for n, _, w, _, _, _ in raw])
    seen: dict[str, int] = {}
    layers = []
    for name, (node, act, weight, wshape, out_axis, red_axis) in zip(names, raw):
        if name in seen:  # one module realised by several nodes: keep names unique
            seen[name] += 1
            name = f"{name}#{seen[name]}"
        else:
            seen[name] = 0
        layers.append(QuantLayer(name=name, node_name=node.name, op_type=node.op_type, weight_name=weight,
                                 weight_shape=tuple(int(d) for d in wshape), params=int(np.prod(wshape)),
                                 activation_input=act, output=node.output[0], weight_axis=out_axis,
                                 reduction_axis=red_axis, conv_geometry=_conv_geometry(node, wshape)))
    return layers


def _attention_matmuls(graph, constants: dict) -> list[AttentionMatMul]:
    """MatMuls of two activations (no weight on either side), with the Softmax-produced input marked."""
    producers = producers_of(graph)
    out = []
    for n in graph.node:
        if n.op_type != "MatMul" or any(i in constants for i in n.input):
            continue
        soft = None
        for idx, t in enumerate(n.input):
            p = producers.get(t)
            while p is not None and p.op_type in ("Cast", "Identity"):  # the FP16 graph casts around Softmax
                p = producers.get(p.input[0])
            if p is not None and p.op_type == "Softmax":
                soft = idx
        out.append(AttentionMatMul(n.name, (n.input[0], n.input[1]), soft))
    return out


def _residual_adds(graph, constants: dict, layers: list[QuantLayer]) -> list[ResidualAdd]:
    producers = producers_of(graph)
    fed_by: dict[str, ResidualAdd] = {}
    for l in layers:
        if l.op_type not in ("Conv", "ConvTranspose"):
            continue
        tensor = l.activation_input
        # walk back through scalar Div/Mul (diffusers' output_scale_factor) to the Add
        for _ in range(3):
            node = producers.get(tensor)
            if node is None:
                break
            if node.op_type in ("Div", "Mul") and len(node.input) == 2 and node.input[1] in constants:
                tensor = node.input[0]
                continue
            if node.op_type == "Add" and all(i not in constants for i in node.input) and len(node.input) == 2:
                add = fed_by.get(node.name) or ResidualAdd(node.name, (node.input[0], node.input[1]), ())
                fed_by[node.name] = replace(add, feeds=add.feeds + (l.name,))
            break
    return list(fed_by.values())
