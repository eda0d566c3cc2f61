"""export stage: a diffusers denoiser folder (UNet or transformer; config.json + weights) to an FP32 ONNX file.

torch's TorchScript exporter (opset 17) keeps module paths in node names and initializer names,
which the inspect stage turns into layer names. Batch and spatial size are dynamic; the
config's sample size and the conditioning length are recorded in the file's metadata so the
calibrator knows what to run. torch and diffusers are imported here only (extra `[torch]`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

from mpq_export.util.errors import MPQError
from mpq_export.util.files import read_json_object
from mpq_export.util.onnx_io import SAMPLE_SIZE_KEY, SEQ_LEN_KEY, SOURCE_CLASS_KEY

UNETS = ("UNet2DModel", "UNet2DConditionModel")
# transformer denoisers on a 4-D latent (patchified inside the model); Flux's packed tokens are not yet
# bumped when an export of the same diffusers folder changes (its cache key holds it): 2 = Flux,
# 3 = PixArt's encoder_attention_mask input
EXPORT_VERSION = 3
TRANSFORMERS = ("SD3Transformer2DModel", "PixArtTransformer2DModel", "FluxTransformer2DModel")
SUPPORTED = UNETS + TRANSFORMERS
# the conditioning length each family's text encoders produce (the ONNX keeps it dynamic; calibration
# without prompts uses it): SD3 77 CLIP + 256 T5 tokens, PixArt-alpha's T5 120
DEFAULT_SEQ_LEN = {"SD3Transformer2DModel": 333, "PixArtTransformer2DModel": 120, "FluxTransformer2DModel": 512}


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
    return read_json_object(os.path.join(unet_dir, "config.json"), "a diffusers model folder")


def find_scheduler_config(unet_dir: str) -> str | None:
    """diffusers pipelines keep it at ../scheduler/scheduler_config.json; single folders beside the UNet."""
    for cand in (os.path.join(unet_dir, "scheduler_config.json"),
                 os.path.join(unet_dir, "scheduler", "scheduler_config.json"),
                 os.path.join(os.path.dirname(os.path.abspath(unet_dir)), "scheduler", "scheduler_config.json")):
        if os.path.exists(cand):
            return cand
    return None


def export_diffusers(unet_dir: str, out_path: str, opset: int = 17, seq_len: int | None = None) -> ExportResult:
    """Export a diffusers denoiser folder (SUPPORTED) to ONNX at out_path."""
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
        unet, loading = getattr(diffusers, cls_name).from_pretrained(unet_dir, output_loading_info=True)
    except Exception as e:
        raise MPQError(f"diffusers cannot load {unet_dir}: {str(e).splitlines()[0][:200]}") from None
    check_loaded_weights(unet_dir, loading)
    unet = unet.eval().float()
    return export_module(unet, out_path, opset=opset, seq_len=seq_len, t0=t0,
                         scheduler_config=find_scheduler_config(unet_dir))


def check_loaded_weights(folder: str, loading: dict) -> None:
    """A one-line error when the weights and config.json disagree: diffusers fills what the weights lack with
    random values and drops what the config has no place for, each with a warning only, and a model
    quantized from that is not the user's."""
    missing, unused = list(loading.get("missing_keys") or []), list(loading.get("unexpected_keys") or [])
    mismatched = list(loading.get("mismatched_keys") or [])
    if not (missing or unused or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights its config.json asks for are missing from the weight files "
                     f"(e.g. {sorted(missing)[0]})")
    if unused:
        parts.append(f"{len(unused)} stored weights have no place in the model config.json describes "
                     f"(e.g. {sorted(unused)[0]})")
    if mismatched:
        parts.append(f"{len(mismatched)} weights have another shape than config.json says (e.g. {mismatched[0][0]})")
    raise MPQError(f"{folder}: the weights and config.json disagree: {'; '.join(parts)}; give the config.json the "
                   f"weights were saved with (or the weights of this config)")


def export_module(unet, out_path: str, opset: int = 17, seq_len: int | None = None, t0: float | None = None,
                  scheduler_config: str | None = None) -> ExportResult:
    """Export an in-memory diffusers denoiser (used by tests and tools that build models on the fly)."""
    import torch

    t0 = t0 or time.perf_counter()
    cfg = unet.config
    cls_name = type(unet).__name__
    seq_len = seq_len or DEFAULT_SEQ_LEN.get(cls_name, 77)
    if cls_name in TRANSFORMERS:
        return _export_transformer(unet, out_path, opset, seq_len, t0, scheduler_config)
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
    return _finish(unet, out_path, size, seq_len, t0, scheduler_config)


def _finish(model_module, out_path: str, size: int, seq_len: int, t0: float, scheduler_config: str | None) -> ExportResult:
    """Record the sample size, the conditioning length and the class in the file's metadata."""
    import onnx

    cls_name = type(model_module).__name__
    model = onnx.load(out_path, load_external_data=False)
    for key, value in ((SAMPLE_SIZE_KEY, f"{size},{size}"), (SEQ_LEN_KEY, str(seq_len)), (SOURCE_CLASS_KEY, cls_name)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, out_path)  # graph only: external data files (large models) stay where torch put them
    return ExportResult(onnx_path=out_path, model_class=cls_name,
                        params=sum(p.numel() for p in model_module.parameters()),
                        scheduler_config=scheduler_config, seconds=time.perf_counter() - t0)


@contextlib.contextmanager
def _no_op_squeeze_of_tokens(torch):
    """While exporting: `tensor.squeeze(1)` of a tensor whose dim 1 is not 1 returns the tensor itself
    (what squeeze does), so the tracer records no runtime branch."""
    real = torch.Tensor.squeeze

    def squeeze(self, *args, **kwargs):
        if args == (1,) and not kwargs and self.dim() > 1 and int(self.shape[1]) != 1:
            return self
        return real(self, *args, **kwargs)

    torch.Tensor.squeeze = squeeze
    try:
        yield
    finally:
        torch.Tensor.squeeze = real


FLUX_DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline's default 1024 px over the VAE's factor 8
FLUX_DEFAULT_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale (Flux-dev's distilled guidance input)


def _flux_forward(m, hidden_states, timestep, encoder_hidden_states, pooled_projections, guidance=None):
    """Flux on a 4-D latent [B, C, H, W], as the rest of the pipeline samples it: the 2 x 2 packing into
    tokens, the image and text position ids and the timestep's scale are FluxPipeline's (_pack_latents,
    _prepare_latent_image_ids, timestep / 1000), done inside the graph so that H and W stay dynamic."""
    import torch

    b, c, h, w = hidden_states.shape
    packed = hidden_states.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    packed = packed.reshape(b, (h // 2) * (w // 2), c * 4)
    rows = torch.arange(h // 2, dtype=torch.float32)[:, None].expand(h // 2, w // 2)
    cols = torch.arange(w // 2, dtype=torch.float32)[None, :].expand(h // 2, w // 2)
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    txt_ids = torch.zeros(encoder_hidden_states.shape[1], 3)
    out = m(hidden_states=packed, encoder_hidden_states=encoder_hidden_states, pooled_projections=pooled_projections,
            timestep=timestep / 1000, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
    return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@contextlib.contextmanager
def _flux_export_guards(torch):
    """While exporting Flux: its rotary embedding in float32 instead of float64 (diffusers uses float64 off
    Apple's GPUs), which TensorRT does not build (positions up to a few hundred keep float32's precision);
    torch's RMSNorm (its q/k norms) written out as x * rsqrt(mean(x^2) + eps) * w, as diffusers' own
    RMSNorm is, since the TorchScript exporter has no aten::rms_norm before opset 23; and the rotary
    embedding traced with dynamic batch and token count."""
    import diffusers.models.transformers.transformer_flux as flux

    def rms_norm(x, normalized_shape, weight=None, eps=None):
        dims = tuple(range(-len(normalized_shape), 0))
        eps = torch.finfo(x.dtype).eps if eps is None else eps
        y = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
        return y * weight if weight is not None else y

    def apply_rotary_emb(x, freqs_cis, sequence_dim=2, **_):
        # diffusers' real-pair rotation with x.unflatten instead of x.reshape(*x.shape[:-1], -1, 2), whose
        # unpacked sizes the tracer writes as constants (batch and token count fixed at the traced ones)
        cos, sin = freqs_cis
        cos, sin = (cos[None, :, None, :], sin[None, :, None, :]) if sequence_dim == 1 else (cos[None, None], sin[None, None])
        x_real, x_imag = x.unflatten(-1, (-1, 2)).unbind(-1)
        x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
        return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)

    saved = flux.maybe_adjust_dtype_for_device, flux.apply_rotary_emb, torch.nn.functional.rms_norm
    flux.maybe_adjust_dtype_for_device = lambda dtype, device: torch.float32
    flux.apply_rotary_emb = apply_rotary_emb
    torch.nn.functional.rms_norm = rms_norm
    try:
        yield
    finally:
        flux.maybe_adjust_dtype_for_device, flux.apply_rotary_emb, torch.nn.functional.rms_norm = saved


def _export_transformer(model, out_path: str, opset: int, seq_len: int, t0: float,
                        scheduler_config: str | None) -> ExportResult:
    """SD3 (MMDiT: joint attention, pooled text projection) and PixArt (cross-attention, adaLN-single)
    transformers, with diffusers' input names. Batch and the text length stay dynamic, and so do height
    and width where the graph allows (SD3; PixArt's are fixed at the sample size).
    PixArt's learned-sigma output (2x the channels) is cut to its first half, the noise prediction the
    sampler uses, as its pipeline does; its resolution/aspect-ratio conditioning (1024-px models) is
    fixed at the config's square sample size."""
    import warnings

    import torch

    cfg = model.config
    cls_name = type(model).__name__
    # Flux's config has no sample size: FluxPipeline's default is 1024 px, a 128 x 128 latent (a
    # "sample_size" written into config.json is read here, as the tiny test models do)
    sample_size = getattr(cfg, "sample_size", None) or model.config.get("sample_size") or FLUX_DEFAULT_SAMPLE_SIZE
    size = sample_size if isinstance(sample_size, int) else sample_size[0]
    batch = 2
    c = cfg.in_channels // 4 if cls_name == "FluxTransformer2DModel" else cfg.in_channels  # Flux packs 2 x 2
    x = torch.randn(batch, c, size, size)
    t = torch.full((batch,), 500.0)
    dtype_guard = contextlib.nullcontext()
    if cls_name == "FluxTransformer2DModel":
        extra = [torch.randn(batch, seq_len, cfg.joint_attention_dim), torch.randn(batch, cfg.pooled_projection_dim)]
        extra_names = ["encoder_hidden_states", "pooled_projections"]
        if cfg.guidance_embeds:  # Flux-dev: distilled guidance is an input (FluxPipeline's guidance_scale)
            extra.append(torch.full((batch,), FLUX_DEFAULT_GUIDANCE))
            extra_names.append("guidance")
        forward = _flux_forward
        dtype_guard = _flux_export_guards(torch)
    elif cls_name == "SD3Transformer2DModel":
        extra = [torch.randn(batch, seq_len, cfg.joint_attention_dim), torch.randn(batch, cfg.pooled_projection_dim)]
        extra_names = ["encoder_hidden_states", "pooled_projections"]

        def forward(m, hidden_states, timestep, encoder_hidden_states, pooled_projections):
            return m(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                     pooled_projections=pooled_projections, return_dict=False)[0]
    else:  # PixArtTransformer2DModel
        # its pipeline pads T5's tokens to 120 and masks the padding: the mask (1 keep, 0 pad) is an input
        extra = [torch.randn(batch, seq_len, cfg.caption_channels), torch.ones(batch, seq_len)]
        extra_names = ["encoder_hidden_states", "encoder_attention_mask"]
        learned_sigma = (cfg.out_channels or c) == 2 * c
        additional = model.use_additional_conditions

        def forward(m, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask):
            n = hidden_states.shape[0]
            cond = {"resolution": None, "aspect_ratio": None}
            if additional:
                cond = {"resolution": torch.tensor([[size * 8.0, size * 8.0]]).repeat(n, 1),
                        "aspect_ratio": torch.ones(n, 1)}
            out = m(hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                    encoder_attention_mask=encoder_attention_mask, added_cond_kwargs=cond, return_dict=False)[0]
            return out[:, :c] if learned_sigma else out

    class Wrapper(torch.nn.Module):  # attribute "m" becomes the "m." / "/m/" prefix inspect strips
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return forward(self.m, *args)

    names = ["hidden_states", "timestep", *extra_names]
    dyn = {"hidden_states": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
           "encoder_hidden_states": {0: "batch", 1: "sequence"}, "out_sample": {0: "batch", 2: "height", 3: "width"}}
    for name in ("pooled_projections", "guidance"):
        if name in names:
            dyn[name] = {0: "batch"}
    if "encoder_attention_mask" in names:
        dyn["encoder_attention_mask"] = {0: "batch", 1: "sequence"}
    squeeze_guard = contextlib.nullcontext()
    if cls_name == "PixArtTransformer2DModel":
        # its output squeezes dim 1 of [batch, tokens, ...] (diffusers: hidden_states.squeeze(1), a no-op
        # for any image of more than one token); TorchScript writes that as an If on the runtime size,
        # which onnxruntime's type inference rejects. Height and width are fixed at the config's sample
        # size, and the no-op squeeze is traced as what it is.
        for name in ("hidden_states", "out_sample"):
            dyn[name] = {0: "batch"}
        squeeze_guard = _no_op_squeeze_of_tokens(torch)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings(), squeeze_guard, dtype_guard:
        warnings.simplefilter("ignore")  # diffusers' shape checks trace as constants (TracerWarning)
        torch.onnx.export(Wrapper(model.eval()), (x, t, *extra), out_path, dynamo=False, opset_version=opset,
                          input_names=names, output_names=["out_sample"], dynamic_axes=dyn)
    return _finish(model, out_path, size, seq_len, t0, scheduler_config)


FLOW_MODELS = ("SD3Transformer2DModel", "FluxTransformer2DModel")  # trained by flow matching: their sampler
GUIDANCE_INPUT_MODELS = ("FluxTransformer2DModel",)  # distilled guidance is an input, not classifier-free rows


def config_layers(unet_dir: str) -> list:
    """The quantizable layers of a diffusers folder's model, from its config.json alone: the model built on
    torch's meta device (no weights, no memory), each Linear a GEMM and each Conv2d a Conv, named and sized as
    inspect will find them in the export. What the configuration decides (a budget's reach, the pins) is
    then checked before the export and the prompt encoding, minutes on a real model."""
    try:
        import diffusers
        import torch
    except ImportError:
        raise MPQError("reading a diffusers folder needs torch and diffusers: pip install 'mpq-export[torch]'") from None
    cfg = read_unet_config(unet_dir)
    cls = getattr(diffusers, cfg.get("_class_name", ""), None)
    quiet_hf_libraries()
    try:
        with torch.device("meta"):
            model = cls.from_config(cls.load_config(unet_dir))
    except Exception as e:
        raise MPQError(f"{unet_dir}/config.json does not describe a {cfg.get('_class_name')} diffusers can build: "
                       f"{str(e).splitlines()[0][:200]}") from None
    return model_layers(model)


def model_layers(model) -> list:
    """A torch model's Linear (GEMM) and Conv layers as QuantLayers, by module path (as inspect names them)."""
    import torch

    from mpq_export.core.model_info import QuantLayer

    out = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            op = "Gemm"
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            op = "Conv" if isinstance(m, torch.nn.Conv2d) else "ConvTranspose"
        else:
            continue
        out.append(QuantLayer(name=name, node_name=name, op_type=op, weight_name=name + ".weight",
                              weight_shape=tuple(m.weight.shape), params=int(m.weight.numel()), activation_input="",
                              output="", weight_axis=0, reduction_axis=1 if op == "Gemm" else -1))
    return out
