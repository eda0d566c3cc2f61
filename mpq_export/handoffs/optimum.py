"""optimum: the onnxruntime target's graph in an Optimum ONNX Runtime pipeline folder.

optimum: Hugging Face Optimum's ONNX Runtime pipelines (`ORTStableDiffusionPipeline`,
`ORTStableDiffusionXLPipeline`) load a folder with `model_index.json`, `scheduler/`, `tokenizer*/`,
`text_encoder*/model.onnx`, `vae_decoder/model.onnx`, `vae_encoder/model.onnx` and `unet/model.onnx`
with `unet/config.json` beside it. Everything but the UNet is exported by `optimum-cli export onnx` from
the user's pipeline folder (once per folder content, cached), in a virtual environment of its own:
optimum-onnx pins transformers < 4.58 and an older huggingface_hub, which the project's diffusers and
transformers do not accept. The UNet is the onnxruntime target's Q/DQ graph with Optimum's names
(`sample`, a scalar `timestep`, `encoder_hidden_states`, SDXL's `text_embeds` and `time_ids`;
`out_sample`). Optimum's CPU provider then runs the integer kernels the onnxruntime target is written
for; its CUDA provider runs the same graph with DequantizeLinear + float kernels (the quality, not the
speed: on a GPU, deploy the tensorrt target with TensorRT).
"""

from __future__ import annotations

import os
import shutil

from mpq_export.core.model_info import ModelInfo
from mpq_export.handoffs.base import (HandOff, HandOffRecord, HandOffSource, copy_file, copy_tree,
                                      move_external_data)
from mpq_export.util.errors import MPQError
from mpq_export.util.output_folder import OPTIMUM_FOLDER

# the environment optimum-cli runs in (the docstring says why it is not the project's)
OPTIMUM_REQUIREMENTS = ("torch==2.13.0", "optimum-onnx[onnxruntime]==0.1.0", "diffusers<0.40")
OPTIMUM_ENV = "optimum-onnx-0.1.0"


def optimum_python(cache_dir: str | None) -> str:
    """The Python that runs optimum-cli: $MPQ_EXPORT_OPTIMUM_PYTHON, else a virtual environment under the
    cache made on first use (OPTIMUM_REQUIREMENTS, about 1.3 GB, minutes)."""
    import subprocess
    import sys

    from mpq_export.util.cache import default_cache_dir
    from mpq_export.util.progress import log

    given = os.environ.get("MPQ_EXPORT_OPTIMUM_PYTHON")
    if given:
        return given
    venv = os.path.join(cache_dir or default_cache_dir(), "peers", OPTIMUM_ENV)
    py = os.path.join(venv, "bin", "python")
    # an interrupted first install leaves a venv without optimum: test the import, not the folder
    if os.path.exists(py) and subprocess.run([py, "-c", "import optimum.onnxruntime, diffusers"],
                                             capture_output=True).returncode == 0:
        return py
    log.warning("[emit optimum] creating Optimum's environment %s (%s; about 1.3 GB, minutes)", venv,
                ", ".join(OPTIMUM_REQUIREMENTS))
    try:
        if not os.path.exists(py):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
        subprocess.run([py, "-m", "pip", "install", "-q", *OPTIMUM_REQUIREMENTS], check=True, capture_output=True,
                       text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = (getattr(e, "stderr", "") or str(e)).strip().splitlines()[-1:] or [""]
        raise MPQError(f"--emit optimum: could not install Optimum into {venv} ({detail[0][:200]}); install "
                       f"{' '.join(OPTIMUM_REQUIREMENTS)} into a virtual environment and point "
                       f"MPQ_EXPORT_OPTIMUM_PYTHON at its python") from None
    return py


def optimum_export(pipe, cache_dir: str | None, scratch: str) -> str:
    """`optimum-cli export onnx` of the pipeline folder (every part; the UNet is replaced later), cached per
    folder content under the cache (without one, written under `scratch`, which the caller removes)."""
    import subprocess
    import tempfile

    from mpq_export.inputs.sd_pipeline import folder_sha
    from mpq_export.util.cache import atomic_path
    from mpq_export.util.progress import log

    sha = folder_sha(pipe.root, cache_dir)[:20]
    dest = os.path.join(cache_dir, f"optimum-{sha}") if cache_dir else os.path.join(scratch, f"optimum-{sha}")
    if os.path.isfile(os.path.join(dest, "model_index.json")):
        log.info("[emit optimum] reusing the Optimum export %s", dest)
        return dest
    py = optimum_python(cache_dir)
    log.info("[emit optimum] exporting the pipeline's other parts with optimum-cli")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with atomic_path(dest) as tmp, tempfile.TemporaryDirectory(prefix="mpq-optimum-view-", dir=scratch) as view:
        root = readable_view(pipe.root, py, view)
        code = ("import sys\nfrom optimum.exporters.onnx.__main__ import main_export\n"
                "main_export(sys.argv[1], output=sys.argv[2], task='text-to-image', no_post_process=False)\n")
        p = subprocess.run([py, "-c", code, root, tmp], capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if p.returncode != 0 or not os.path.isfile(os.path.join(tmp, "model_index.json")):
            last = (p.stderr.strip().splitlines() or [""])[-1]
            raise MPQError(f"--emit optimum: optimum-cli could not export {pipe.root} ({last[:300]})")
        check_parts(tmp, pipe)  # before the cache keeps it
        shutil.rmtree(os.path.join(tmp, "unet"), ignore_errors=True)  # ours replaces it; GBs at SD size
        os.makedirs(os.path.join(tmp, "unet"))
        shutil.copyfile(os.path.join(pipe.unet_dir, "config.json"), os.path.join(tmp, "unet", "config.json"))
    return dest


# the parameter names of a transformers class in Optimum's environment, for a config (on the meta device:
# no weights are made)
_PARAMETER_NAMES = r"""
import json, sys, torch, transformers
config = transformers.AutoConfig.from_pretrained(sys.argv[2])
with torch.device("meta"):
    model = getattr(transformers, sys.argv[1])(config)
print(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}))
"""


def readable_view(root: str, py: str, scratch: str) -> str:
    """`root`, or a view of it in `scratch` whose text encoders' weights carry the parameter names of the
    transformers in Optimum's environment: transformers 5 saves CLIP's text model without its `text_model.`
    prefix, which Optimum's transformers (< 4.58) does not find, and it would then export a randomly
    initialised encoder. Each saved name maps to the one name of the old class that ends with it (and has
    its shape); the other parts are linked as they are."""
    import json
    import subprocess

    from safetensors import safe_open
    from safetensors.numpy import save_file

    with open(os.path.join(root, "model_index.json")) as f:
        index = json.load(f)
    renamed = {}
    for part in ("text_encoder", "text_encoder_2"):
        entry, folder = index.get(part), os.path.join(root, part)
        weights = os.path.join(folder, "model.safetensors")
        if not (isinstance(entry, list) and entry[0] == "transformers" and os.path.isfile(weights)):
            continue
        p = subprocess.run([py, "-c", _PARAMETER_NAMES, entry[1], folder], capture_output=True, text=True)
        if p.returncode != 0:
            continue  # check_parts decides whether the export read the weights
        expected = json.loads(p.stdout.strip().splitlines()[-1])
        with safe_open(weights, "np") as f:
            saved = {k: f.get_tensor(k) for k in f.keys()}
        if set(saved) <= set(expected):
            continue  # already named as Optimum's transformers names them
        mapping = {}
        for k, v in saved.items():
            hits = [e for e in expected if (e == k or e.endswith("." + k)) and list(v.shape) == expected[e]]
            if len(hits) != 1:
                mapping = None
                break
            mapping[hits[0]] = v
        if mapping:
            renamed[part] = mapping
    if not renamed:
        return root
    for name in os.listdir(root):
        if name in renamed:
            os.makedirs(os.path.join(scratch, name))
            for f in os.listdir(os.path.join(root, name)):
                if f != "model.safetensors":
                    os.symlink(os.path.join(root, name, f), os.path.join(scratch, name, f))
            save_file(renamed[name], os.path.join(scratch, name, "model.safetensors"), metadata={"format": "pt"})
        else:
            os.symlink(os.path.join(root, name), os.path.join(scratch, name))
    return scratch


# how far an exported part may be from the pipeline's own module (relative RMS error, FP32 both): an
# exporter's float reordering is ~1e-6; a part whose weights were not read is ~1
PART_TOLERANCE = 1e-3


def part_errors(folder: str, pipe) -> dict[str, float]:
    """part -> the relative RMS error of `folder`'s ONNX part against the pipeline's own module on the same
    inputs, in this environment: each text encoder's last hidden state (random token ids), the VAE
    decoder's image and the VAE encoder's distribution parameters (what Optimum's graphs return). Optimum's
    environment pins an older transformers, which initialises weights it cannot read at random with only a
    warning; this is where that shows."""
    import json

    import numpy as np
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)

    def run(part: str, feed: np.ndarray, output: str) -> np.ndarray:
        sess = ort.InferenceSession(os.path.join(folder, part, "model.onnx"), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        dtype = np.int32 if inp.type == "tensor(int32)" else np.int64 if "int" in inp.type else np.float32
        return sess.run([output], {inp.name: feed.astype(dtype)})[0]

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.sqrt(((a - b) ** 2).mean() / max((b ** 2).mean(), 1e-30)))

    with open(os.path.join(pipe.root, "model_index.json")) as f:
        index = json.load(f)
    errors = {}
    with torch.no_grad():
        for part in ("text_encoder", "text_encoder_2"):
            if not (isinstance(index.get(part), list) and os.path.isfile(os.path.join(folder, part, "model.onnx"))):
                continue
            import transformers

            model = getattr(transformers, index[part][1]).from_pretrained(os.path.join(pipe.root, part)).eval()
            ids = rng.integers(0, model.config.vocab_size, size=(1, model.config.max_position_embeddings))
            ref = model(torch.from_numpy(ids)).last_hidden_state.numpy()
            errors[part] = rel(run(part, ids, "last_hidden_state"), ref)
        if os.path.isdir(os.path.join(pipe.root, "vae")):
            import diffusers

            vae = getattr(diffusers, index["vae"][1]).from_pretrained(os.path.join(pipe.root, "vae")).eval()
            down = 2 ** (len(vae.config.down_block_types) - 1)
            if os.path.isfile(os.path.join(folder, "vae_decoder", "model.onnx")):
                z = rng.standard_normal((1, vae.config.latent_channels, 8, 8)).astype(np.float32)
                errors["vae_decoder"] = rel(run("vae_decoder", z, "sample"), vae.decode(torch.from_numpy(z)).sample.numpy())
            if os.path.isfile(os.path.join(folder, "vae_encoder", "model.onnx")):
                x = rng.uniform(-1, 1, (1, vae.config.in_channels, 8 * down, 8 * down)).astype(np.float32)
                ref = vae.encode(torch.from_numpy(x)).latent_dist.parameters.numpy()
                errors["vae_encoder"] = rel(run("vae_encoder", x, "latent_parameters"), ref)
    return errors


def check_parts(folder: str, pipe) -> None:
    """Refuse an export whose parts do not compute what the pipeline's do (part_errors)."""
    bad = {p: e for p, e in part_errors(folder, pipe).items() if not e <= PART_TOLERANCE}
    if bad:
        shown = ", ".join(f"{p} (relative error {e:.3g})" for p, e in bad.items())
        raise MPQError(f"--emit optimum: Optimum's export of {pipe.root} does not compute what the pipeline does: "
                       f"{shown}; Optimum's environment could not read those weights. Export the pipeline with "
                       f"optimum-cli where it reads them and give that Optimum ONNX folder as the model, or drop "
                       f"--emit optimum")


def emit_optimum(q_path: str, info: ModelInfo, pipe, out_dir: str, final_dir: str,
                 cache_dir: str | None, optimum_folder: str | None = None) -> HandOffRecord:
    """`out_dir/optimum/`: the Optimum export of the pipeline (or the given Optimum folder's parts) with the
    Q/DQ UNet in unet/model.onnx."""
    import tempfile

    from mpq_export.util.output_folder import SCRATCH_PREFIX

    dest = os.path.join(out_dir, OPTIMUM_FOLDER)
    if optimum_folder is not None:  # reused as given: every part but the UNet's graph and weights
        copy_tree(optimum_folder, dest, skip=os.path.join(optimum_folder, "unet"))
        os.makedirs(os.path.join(dest, "unet"), exist_ok=True)
        unet_cfg = os.path.join(optimum_folder, "unet", "config.json")
        if os.path.isfile(unet_cfg):
            copy_file(unet_cfg, os.path.join(dest, "unet", "config.json"))
        source = optimum_folder
    else:
        with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}optimum-{os.getpid()}-") as scratch:
            copy_tree(optimum_export(pipe, cache_dir, scratch), dest)
        source = f"exported by optimum-cli from {pipe.root}"
    write_optimum_unet(q_path, info, os.path.join(dest, "unet"), move=True)
    sdxl = os.path.isdir(os.path.join(dest, "text_encoder_2"))
    cls = "ORTStableDiffusionXLPipeline" if sdxl else "ORTStableDiffusionPipeline"
    final = os.path.join(final_dir, OPTIMUM_FOLDER)
    command = (f'python -c "from optimum.onnxruntime import {cls}; '
               f"pipe = {cls}.from_pretrained('{final}', provider='CPUExecutionProvider'); "
               f"pipe('a photo of an astronaut riding a horse').images[0].save('out.png')\"")
    checked = (f"the other parts: {'those of ' if optimum_folder else ''}{source}; unet/model.onnx is this output's Q/DQ "
               f"graph with a scalar timestep, unet/config.json the pipeline's")
    return HandOffRecord(Optimum.name, final, os.path.join(final, "unet", "model.onnx"), command, checked)


def write_optimum_unet(src: str, info: ModelInfo, unet_dir: str, move: bool = False) -> str:
    """unet_dir/model.onnx: the ONNX UNet at `src` as Optimum's pipelines feed it (a scalar timestep, which
    the graph expands to the batch as diffusers' UNet does), external weights linked beside it."""
    import onnx

    from mpq_export.util.onnx_io import load_onnx

    model = load_onnx(src, load_weights=False)
    t = next(i for i in model.graph.input if i.name == info.timestep.name)
    del t.type.tensor_type.shape.dim[:]
    path = os.path.join(unet_dir, "model.onnx")
    onnx.save(model, path)
    if move:
        move_external_data(src, path)  # one copy of the weights: the output's model names them there
    else:
        _copy_external_data(src, unet_dir)
    return path


def _copy_external_data(src: str, folder: str) -> None:
    from mpq_export.util.onnx_io import load_onnx

    src_dir = os.path.dirname(os.path.abspath(src))
    model = load_onnx(src, load_weights=False)
    for loc in sorted({e.value for x in model.graph.initializer for e in x.external_data if e.key == "location"}):
        copy_file(os.path.join(src_dir, loc), os.path.join(folder, loc))


class Optimum(HandOff):
    name = "optimum"
    folder = OPTIMUM_FOLDER
    help = ("an Optimum ONNX Runtime pipeline folder <out>/optimum, from a pipeline folder; onnxruntime target; "
            "its other parts exported by optimum-cli in an environment of its own")

    def check_family(self, class_name: str | None, source: HandOffSource) -> None:
        if class_name is not None and class_name != "UNet2DConditionModel":
            raise MPQError(f"--emit optimum writes Optimum's Stable Diffusion pipelines (a UNet2DConditionModel); "
                           f"this model is a {class_name}: drop --emit optimum")
        self.check(None, source)

    def check(self, info: ModelInfo, source: HandOffSource) -> None:
        pipe = source.pipeline
        whole = pipe is not None and pipe.text_encoder_dir is not None and pipe.vae_dir is not None
        if not whole and source.optimum_folder is None:
            raise MPQError("--emit optimum writes a whole ONNX Runtime pipeline (text encoders, VAE, UNet): give the "
                           "diffusers pipeline folder (model_index.json, text_encoder/, vae/, unet/) or an Optimum "
                           "ONNX folder instead of the UNet alone, or drop --emit optimum")

    def emit(self, q_path: str, info: ModelInfo, out_dir: str, final_dir: str, source: HandOffSource) -> HandOffRecord:
        return emit_optimum(q_path, info, source.pipeline, out_dir, final_dir, source.cache_dir, source.optimum_folder)
