"""trt-demo: the tensorrt target's graph laid out as TensorRT's demo/Diffusion loads it.

trt-demo: TensorRT's demo/Diffusion (`demo_txt2img.py`, `demo_txt2img_xl.py`) builds an existing
`<onnx-dir>/<name>.opt/model.onnx` as it is instead of exporting its own (diffusion_pipeline.py,
`_export_onnx`), where <name> is `unet` for SD 1.x/2.x and `unetxl` for SDXL. Its UNet models
(demo_diffusion/model/unet.py) declare the contract this module writes and checks:

    inputs   sample [2B, 4, H, W], timestep [1] (static), encoder_hidden_states [2B, 77, D]
             (+ SDXL: text_embeds [2B, 1280], time_ids [2B, 6])
    output   latent [2B, 4, H, W]
    dynamic  sample {0: 2B, 2: H, 3: W}, encoder_hidden_states {0: 2B}, latent {0: 2B, 2: H, 3: W}
             (+ text_embeds {0: 2B}, time_ids {0: 2B})

The graph is the tensorrt target's (FP16 + Q/DQ): only the graph's inputs and output are renamed and
reshaped; weights in an external file move beside the new .onnx (referenced by relative name, as the demo wants) and
the output's model.mpq.onnx names them there: one file, one link (handoffs/base.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mpq_export.core.model_info import ModelInfo
from mpq_export.handoffs.base import HandOff, HandOffRecord, HandOffSource, move_external_data
from mpq_export.util.errors import MPQError
from mpq_export.util.output_folder import HANDOFF_FOLDER

TRT_DEMO_FOLDER = HANDOFF_FOLDER
DEMO_DENOISERS = ("UNet2DConditionModel",)  # the diffusers classes whose demo contract this hand-off writes
DEMO_TEXT_MAXLEN = 77  # demo/Diffusion's text_maxlen: the CLIP token count its encoders produce
# cross-attention width -> (the demo's --version at its head, the demo releases that take it, what TensorRT
# 10.14 and earlier took); from demo_diffusion/dd_argparse.py and unet.py (get_unet_embedding_dim): since
# 10.15 the demo names SD 1.x "1.4" (or "dreamshaper-7") and has no SD 2.x at all
DEMO_VERSIONS = {768: ("1.4", "TensorRT 10.15 and later", "1.5"), 1024: (None, "", "2.1"),
                 2048: ("xl-1.0", "every release since 9.0", "xl-1.0")}


@dataclass(frozen=True)
class _DemoContract:
    name: str  # unet | unetxl
    inputs: dict[str, list]  # input -> shape; str entries are dynamic axes, ints static
    output: list


def demo_contract(info: ModelInfo) -> _DemoContract:
    """The demo's declared inputs and output for this UNet (a one-line error if the demo has no such model)."""
    names = [info.sample.name, info.timestep.name, *(c.name for c in info.conditioning)]
    cond = {c.name: c for c in info.conditioning}
    if "encoder_hidden_states" not in cond:
        raise MPQError("--emit trt-demo takes a text-conditioned UNet (SD 1.x/2.x, SDXL: an encoder_hidden_states "
                       f"input); this model's inputs are {', '.join(names)}: drop --emit trt-demo")
    xl = {"text_embeds", "time_ids"} <= set(cond)
    if set(cond) - {"encoder_hidden_states", "text_embeds", "time_ids"} or ("text_embeds" in cond) != xl:
        raise MPQError(f"--emit trt-demo: demo/Diffusion's UNets take sample, timestep, encoder_hidden_states "
                       f"(SDXL + text_embeds, time_ids); this model's inputs are {', '.join(names)}")
    channels = info.sample.shape[1]
    width = cond["encoder_hidden_states"].shape[-1]
    inputs = {"sample": ["2B", channels, "H", "W"], "timestep": [1],
              "encoder_hidden_states": ["2B", DEMO_TEXT_MAXLEN, width]}
    if xl:
        inputs.update({"text_embeds": ["2B", cond["text_embeds"].shape[-1]], "time_ids": ["2B", 6]})
    return _DemoContract("unetxl" if xl else "unet", inputs, ["2B", channels, "H", "W"])


def emit_trt_demo(q_path: str, info: ModelInfo, out_dir: str, final_dir: str) -> HandOffRecord:
    """`out_dir/trt-demo/<unet|unetxl>.opt/model.onnx`: the Q/DQ graph with the demo's names and shapes.
    `final_dir` is where `out_dir` will be published (the command names it)."""
    import onnx
    import onnx.numpy_helper

    from mpq_export.util.onnx_io import load_onnx

    contract = demo_contract(info)
    model = load_onnx(q_path, load_weights=False)
    g = model.graph
    rename = {info.sample.name: "sample", info.timestep.name: "timestep", g.output[0].name: "latent"}
    scalar_t = len(info.timestep.shape) == 0
    if scalar_t:  # a graph made for a scalar timestep (Optimum's) reads the demo's [1] through a Reshape to []
        rename[info.timestep.name] = "timestep_scalar"
    for n in g.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
    if scalar_t:
        t_in = next(i for i in g.input if i.name == info.timestep.name)
        t_in.name = "timestep"
        g.initializer.append(onnx.numpy_helper.from_array(np.zeros(0, np.int64), "timestep_scalar_shape"))
        g.node.insert(0, onnx.helper.make_node("Reshape", ["timestep", "timestep_scalar_shape"], ["timestep_scalar"],
                                               name="timestep_to_scalar"))
    for vi in list(g.input) + list(g.output):
        if vi.name != "timestep":
            vi.name = rename.get(vi.name, vi.name)
        want = contract.inputs.get(vi.name) if vi.name != "latent" else contract.output
        if want is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for d in want:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = int(d)
    folder = os.path.join(out_dir, TRT_DEMO_FOLDER, f"{contract.name}.opt")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    onnx.save(model, path)
    move_external_data(q_path, path)  # the weights, by the same relative name as before
    problems = check_trt_demo(os.path.join(out_dir, TRT_DEMO_FOLDER), info)
    if problems:
        raise MPQError(f"internal: the trt-demo graph breaks the demo's contract: {problems[0]}")
    _same_as_the_written_model(os.path.join(out_dir, TRT_DEMO_FOLDER), q_path, info)
    final = os.path.join(final_dir, TRT_DEMO_FOLDER)
    width = contract.inputs["encoder_hidden_states"][2]
    multiple = latent_multiple(q_path)
    size = [max(multiple, (d // multiple) * multiple) for d in (info.sample_size or (64, 64))]
    command = demo_command(contract.name, width, final, (size[0] * 8, size[1] * 8))
    checked = ("names, shapes and dynamic axes as demo/Diffusion's unet.py declares them, external data by relative "
               "name, element types of every same-type op input agreeing (onnx type inference), and the graph run "
               f"by onnxruntime with the demo's [1]-shaped timestep; latent H and W must be multiples of {multiple} "
               f"(images multiples of {multiple * 8}): build static shapes at such a size, not "
               f"--build-dynamic-shape, whose profile includes other sizes")
    if width not in DEMO_VERSIONS:
        checked += (f"; the demo knows only the released widths {sorted(DEMO_VERSIONS)} of encoder_hidden_states "
                    f"(this model: {width})")
    return HandOffRecord(TrtDemo.name, final, os.path.join(final, f"{contract.name}.opt", "model.onnx"), command, checked)


def demo_command(name: str, width: int, final: str, image: tuple[int, int]) -> str:
    """The demo/Diffusion command for a UNet folder at `final` (`name`: unet or unetxl, `width`: its
    cross-attention width), with the demo version its head takes and what releases up to 10.14 took."""
    head, releases, old = DEMO_VERSIONS.get(width, (None, "", None))
    script = "demo_txt2img_xl.py" if name == "unetxl" else "demo_txt2img.py"
    # each output its own engine folder: the demo reuses any engine it finds there (a sweep's budgets would
    # otherwise all run the first one's); beside the output, which the demo's engines would not fit
    engines = f"{final.rstrip(os.sep)}-engines"
    args = (f'"a photo of an astronaut riding a horse" --onnx-dir {final} --engine-dir {engines} '
            f"--height {image[0]} --width {image[1]}")
    if head is not None:
        command = f"python3 {script} {args} --version {head}"
        if old != head:
            command += f"  # {releases}; demo/Diffusion of TensorRT 10.14 and earlier: --version {old}"
        return command
    if old is not None:
        return (f"python3 {script} {args} --version {old}  # demo/Diffusion of TensorRT 10.14 and earlier: it has "
                f"no SD 2.x since 10.15")
    return f"python3 {script} {args} --version <the checkpoint's>"


def latent_multiple(path: str) -> int:
    """What latent H and W must be multiples of: 2 to the number of stride-2 convolutions (the UNet's
    downsamplers). The exported graph concatenates each upsampled map with its skip connection, which match
    only at such sizes (diffusers' own forward pads odd sizes through `upsample_size`; the export does not)."""
    from mpq_export.util.onnx_io import load_onnx

    model = load_onnx(path, load_weights=False)
    down = sum(1 for n in model.graph.node if n.op_type == "Conv"
               and any(a.name == "strides" and list(a.ints) == [2, 2] for a in n.attribute))
    return 2 ** down


def _same_as_the_written_model(folder: str, q_path: str, info: ModelInfo) -> None:
    """The demo's feeds (one [1]-shaped timestep for the whole batch) give what the written model gives
    with that timestep repeated per row: the renaming changed names and shapes only."""
    from mpq_export.runtime.ort import ort_session

    feeds = run_with_demo_feeds(folder, info)
    latent = feeds.pop("latent")
    batch = feeds["sample"].shape[0]
    t = feeds.pop("timestep")
    t = t.reshape(()) if len(info.timestep.shape) == 0 else np.repeat(t, batch)
    theirs = {info.sample.name: feeds.pop("sample"), info.timestep.name: t, **feeds}
    sess = ort_session(q_path, 0, os.path.dirname(os.path.abspath(q_path)))
    ref = sess.run(None, theirs)[0]
    if not np.allclose(latent, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max() + 1e-12)):
        raise MPQError("internal: the trt-demo graph computes something else than the written model "
                       f"(max difference {float(np.abs(latent - ref).max()):.3g})")


# ops whose float inputs must share one element type (a strongly typed TensorRT build refuses a mix)
_SAME_TYPE_INPUTS = {"Add": None, "Sub": None, "Mul": None, "Div": None, "MatMul": None, "Gemm": None,
                     "Concat": None, "Conv": None, "ConvTranspose": None, "LayerNormalization": (0, 1, 2),
                     "InstanceNormalization": None, "GroupNormalization": None, "Where": (1, 2),
                     "Max": None, "Min": None, "Sum": None}
_FLOATS = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def check_trt_demo(folder: str, info: ModelInfo) -> list[str]:
    """Every way the emitted folder breaks demo/Diffusion's contract (empty: none)."""
    import onnx

    from mpq_export.util.onnx_io import external_data_problem, infer_shapes_without_weights, load_onnx

    contract = demo_contract(info)
    path = os.path.join(folder, f"{contract.name}.opt", "model.onnx")
    if not os.path.exists(path):
        return [f"{path} is missing"]
    model = load_onnx(path, load_weights=False)
    out = []
    problem = external_data_problem(model, os.path.dirname(path))
    if problem:
        out.append(problem)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location" and (os.path.isabs(e.value) or os.sep in e.value.strip("./")):
                out.append(f"initializer {t.name} refers to its data by a path ({e.value}), not a name beside the model")
    g = model.graph
    got_inputs = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]
    if got_inputs != list(contract.inputs):
        out.append(f"inputs are {got_inputs}, the demo's are {list(contract.inputs)}")
    if [o.name for o in g.output] != ["latent"]:
        out.append(f"outputs are {[o.name for o in g.output]}, the demo's is ['latent']")

    def shape(vi):
        return [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]

    for vi in list(g.input) + list(g.output):
        want = contract.output if vi.name == "latent" else contract.inputs.get(vi.name)
        if want is not None and shape(vi) != want:
            out.append(f"{vi.name} has shape {shape(vi)}, the demo declares {want}")
    infer_shapes_without_weights(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type not in _SAME_TYPE_INPUTS:
            continue
        idx = _SAME_TYPE_INPUTS[n.op_type] or range(len(n.input))
        seen = {onnx.TensorProto.DataType.Name(types[n.input[i]]) for i in idx
                if i < len(n.input) and n.input[i] and types.get(n.input[i]) in _FLOATS}
        if len(seen) > 1:
            out.append(f"node {n.name} ({n.op_type}) mixes {', '.join(sorted(seen))} inputs")
    return out


def run_with_demo_feeds(folder: str, info: ModelInfo, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """The emitted graph run by onnxruntime on random inputs shaped as the demo feeds them (timestep [1]);
    returns the feeds and the output (`latent`)."""
    from mpq_export.runtime.ort import ort_session

    contract = demo_contract(info)
    path = os.path.join(folder, f"{contract.name}.opt", "model.onnx")
    rng = np.random.default_rng(seed)
    h, w = info.sample_size or (8, 8)
    feeds = {"sample": rng.standard_normal((batch, contract.inputs["sample"][1], h, w)).astype(np.float32),
             "timestep": np.array([500.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((batch, DEMO_TEXT_MAXLEN,
                                                           contract.inputs["encoder_hidden_states"][2])).astype(np.float32)}
    if "text_embeds" in contract.inputs:
        feeds["text_embeds"] = rng.standard_normal((batch, contract.inputs["text_embeds"][1])).astype(np.float32)
        feeds["time_ids"] = np.tile(np.array([[h * 8, w * 8, 0, 0, h * 8, w * 8]], np.float32), (batch, 1))
    sess = ort_session(path, 0, os.path.dirname(path))
    feeds["latent"] = sess.run(["latent"], feeds)[0]
    return feeds




class TrtDemo(HandOff):
    name = "trt-demo"
    folder = TRT_DEMO_FOLDER
    help = ("TensorRT's demo/Diffusion: <out>/trt-demo/unet.opt/model.onnx, SD 1.x/2.x and SDXL UNets; "
            "tensorrt target")

    def check_family(self, class_name: str | None, source: HandOffSource) -> None:
        if class_name is not None and class_name not in DEMO_DENOISERS:
            raise MPQError(f"--emit trt-demo writes the UNets of TensorRT's demo/Diffusion (SD 1.x/2.x, SDXL: "
                           f"{', '.join(DEMO_DENOISERS)}); this model is a {class_name}: drop --emit trt-demo")

    def check(self, info: ModelInfo, source: HandOffSource) -> None:
        demo_contract(info)

    def emit(self, q_path: str, info: ModelInfo, out_dir: str, final_dir: str, source: HandOffSource) -> HandOffRecord:
        return emit_trt_demo(q_path, info, out_dir, final_dir)

    def check_contract(self, folder: str, info: ModelInfo) -> list[str]:
        return check_trt_demo(os.path.join(folder, TRT_DEMO_FOLDER), info)
