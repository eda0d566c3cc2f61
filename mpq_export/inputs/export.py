"""export stage: a diffusers UNet folder (config.json + weights) to an FP32 ONNX file.

torch's TorchScript exporter (opset 17) keeps module paths in node names and initializer names,
which the inspect stage turns into layer names. Batch and spatial size are dynamic; the
config's sample size and the conditioning length are recorded in the file's metadata so the
calibrator knows what to run. torch and diffusers are imported here only (extra `[torch]`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from mpq_export.util.errors import MPQError
from mpq_export.util.files import read_json_object
from mpq_export.util.onnx_io import SAMPLE_SIZE_KEY, SEQ_LEN_KEY, SOURCE_CLASS_KEY

SUPPORTED = ("UNet2DModel", "UNet2DConditionModel")


@dataclass
class ExportResult:
    onnx_path: str
    model_class: str
    params: int
    scheduler_config: str | None  # a scheduler_config.json found next to the UNet, if any
    seconds: float


def quiet_hf_libraries() -> None:
    """diffusers and transformers print advice (install accelerate) and progress bars on every load:
    not the user's concern, and they break our one-line-per-stage log."""
    import importlib

    for mod in ("diffusers", "transformers"):
        try:
            logging_ = importlib.import_module(f"{mod}.utils.logging")
        except ImportError:
            continue
        logging_.set_verbosity_error()
        logging_.disable_progress_bar()


def is_diffusers_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def read_unet_config(unet_dir: str) -> dict:
    """The folder's config.json as a dict, or a one-line error."""
    return read_json_object(os.path.join(unet_dir, "config.json"), "a diffusers UNet folder")


def find_scheduler_config(unet_dir: str) -> str | None:
    """diffusers pipelines keep it at ../scheduler/scheduler_config.json; single folders beside the UNet."""
    for cand in (os.path.join(unet_dir, "scheduler_config.json"),
                 os.path.join(unet_dir, "scheduler", "scheduler_config.json"),
                 os.path.join(os.path.dirname(os.path.abspath(unet_dir)), "scheduler", "scheduler_config.json")):
        if os.path.exists(cand):
            return cand
    return None


def export_diffusers(unet_dir: str, out_path: str, opset: int = 17, seq_len: int = 77) -> ExportResult:
    """Export a diffusers UNet2DModel / UNet2DConditionModel folder to ONNX at out_path."""
    try:
        import torch  # noqa: F401  (diffusers needs it; a clear message when it is missing)
        import diffusers
    except ImportError:
        raise MPQError("exporting a diffusers folder needs torch and diffusers: pip install 'mpq-export[torch]'") from None
    cfg = read_unet_config(unet_dir)
    cls_name = cfg.get("_class_name", "")
    if cls_name not in SUPPORTED:
        raise MPQError(f"{unet_dir}/config.json describes a '{cls_name or 'unknown'}' model; supported: {', '.join(SUPPORTED)}")
    t0 = time.perf_counter()
    quiet_hf_libraries()
    try:
        unet = getattr(diffusers, cls_name).from_pretrained(unet_dir).eval().float()
    except Exception as e:
        raise MPQError(f"diffusers cannot load {unet_dir}: {str(e).splitlines()[0][:200]}") from None
    return export_module(unet, out_path, opset=opset, seq_len=seq_len, t0=t0,
                         scheduler_config=find_scheduler_config(unet_dir))


def export_module(unet, out_path: str, opset: int = 17, seq_len: int = 77, t0: float | None = None,
                  scheduler_config: str | None = None) -> ExportResult:
    """Export an in-memory diffusers UNet (used by tests and tools that build models on the fly)."""
    import onnx
    import torch

    t0 = t0 or time.perf_counter()
    cfg = unet.config
    cls_name = type(unet).__name__
    conditional = cls_name == "UNet2DConditionModel"
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    batch = 2  # batch >= 2 keeps the batch dimension dynamic in every exporter
    sample = torch.randn(batch, cfg.in_channels, size, size)
    timestep = torch.full((batch,), 10.0)
    names = ["sample", "timestep"]
    dyn = {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"}, "out_sample": {0: "batch", 2: "height", 3: "width"}}
    class_embed = getattr(cfg, "num_class_embeds", None)
    # SDXL-style UNets also take the pooled text embedding and the size/crop "time ids"
    text_time = conditional and getattr(cfg, "addition_embed_type", None) == "text_time"

    class Wrapper(torch.nn.Module):  # attribute "m" becomes the "m." / "/m/" prefix inspect strips
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            if text_time:
                return self.m(args[0], args[1], encoder_hidden_states=args[2], return_dict=False,
                              added_cond_kwargs={"text_embeds": args[3], "time_ids": args[4]})[0]
            if conditional:
                return self.m(args[0], args[1], encoder_hidden_states=args[2], return_dict=False)[0]
            if class_embed:
                return self.m(args[0], args[1], class_labels=args[2], return_dict=False)[0]
            return self.m(args[0], args[1], return_dict=False)[0]

    inputs = [sample, timestep]
    if conditional:
        inputs.append(torch.randn(batch, seq_len, cfg.cross_attention_dim))
        names.append("encoder_hidden_states")
        dyn["encoder_hidden_states"] = {0: "batch", 1: "sequence"}
        if text_time:
            n_text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            inputs += [torch.randn(batch, n_text), torch.full((batch, 6), float(size * 8))]
            names += ["text_embeds", "time_ids"]
            dyn.update({"text_embeds": {0: "batch"}, "time_ids": {0: "batch"}})
    elif class_embed:
        inputs.append(torch.zeros(batch, dtype=torch.int64))
        names.append("class_labels")
        dyn["class_labels"] = {0: "batch"}
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # diffusers' shape checks trace as constants (TracerWarning); the exported graph is still
        # correct for the dynamic axes we declare, which the tests run at other batch sizes
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(unet.eval()), tuple(inputs), out_path, dynamo=False, opset_version=opset,
                          input_names=names, output_names=["out_sample"], dynamic_axes=dyn)
    model = onnx.load(out_path, load_external_data=False)
    for key, value in ((SAMPLE_SIZE_KEY, f"{size},{size}"), (SEQ_LEN_KEY, str(seq_len)), (SOURCE_CLASS_KEY, cls_name)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, out_path)  # graph only: external data files (large models) stay where torch put them
    return ExportResult(onnx_path=out_path, model_class=cls_name, params=sum(p.numel() for p in unet.parameters()),
                        scheduler_config=scheduler_config, seconds=time.perf_counter() - t0)
