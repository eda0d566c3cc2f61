"""The model a run starts from: the user's ONNX file as it is, or a diffusers UNet (alone or in a pipeline
folder) exported to ONNX once per content hash in the cache; for a text-to-image pipeline folder also its
prompts, encoded by its own text encoder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpq_export.util.cache import file_sha256, is_writable, temporary_name
from mpq_export.util.errors import MPQError
from mpq_export.util.onnx_io import load_onnx
from mpq_export.util.output_folder import SCRATCH_PREFIX
from mpq_export.util.progress import log

if TYPE_CHECKING:
    from mpq_export.inputs.sd_pipeline import PipelineFolder


@dataclass(frozen=True)
class ModelRequest:
    """What a run starts from, as the user gave it (PipelineConfig's fields of the same names)."""
    model: str  # an .onnx file, a diffusers model folder, a pipeline folder or an Optimum ONNX folder
    prompts: str | None = None  # pipeline folders: one prompt per line (None: the bundled prompt set)
    calib_data: str | None = None
    scheduler_config: str | None = None
    resolution: tuple[int, int] | None = None  # the latent size prompts are encoded for (SDXL's time_ids)
    seq_len: int | None = None  # --seq-len: the conditioning length of a model without encoded prompts
    guidance_scale: float | None = None  # --guidance-scale as given (None: the input's default)


@dataclass
class PreparedModel:
    onnx_path: str  # the FP32 ONNX the run starts from
    scheduler_config: str | None
    notes: list[str]
    temp_dir: str | None = None  # an export made without a cache: the caller removes it when done
    pipeline: PipelineFolder | None = None  # when the input is a diffusers text-to-image pipeline folder
    calib_data: str | None = None  # the pipeline's prompts encoded by its text encoder (.npz, sd_pipeline)
    optimum_folder: str | None = None  # the input is an Optimum ONNX pipeline folder (its UNet: unet/model.onnx)
    # the latent (H, W) the input's own config gives where the ONNX leaves it dynamic (Optimum's exports)
    default_resolution: tuple[int, int] | None = None

    def guidance_scale(self, requested: float | None) -> float:
        """The requested scale, else the pipeline type's default when prompts were encoded, else 1 (none)."""
        if requested is not None:
            return float(requested)
        return self.pipeline.default_guidance if self.pipeline is not None and self.calib_data else 1.0


@dataclass
class ModelPreview:
    """What the input's files say before any export or encoding: the denoiser's diffusers class, its
    layers (built from its config on the meta device), its pipeline folder, its noise schedule."""
    class_name: str | None  # None: an ONNX file another tool exported
    layers: list | None  # QuantLayers from config.json (None for ONNX inputs: inspect reads them at once)
    pipeline: PipelineFolder | None
    optimum_folder: str | None
    schedule: object | None  # runtime.sampler.NoiseSchedule of the scheduler config the run will use
    notes: list[str]


# each diffusers pipeline class and the denoiser class it runs
PIPELINE_DENOISERS = {"StableDiffusionPipeline": "UNet2DConditionModel",
                      "StableDiffusionXLPipeline": "UNet2DConditionModel",
                      "StableDiffusion3Pipeline": "SD3Transformer2DModel", "FluxPipeline": "FluxTransformer2DModel",
                      "PixArtAlphaPipeline": "PixArtTransformer2DModel", "PixArtSigmaPipeline": "PixArtTransformer2DModel"}


def preview_model(cfg: ModelRequest) -> ModelPreview:
    """Everything the configuration files decide, checked before the export and the prompt encoding (minutes
    on a real model): a broken pipeline folder, a scheduler that does not fit the model, text encoders or a
    VAE whose weight files are cut short are one-line errors here; the layers let the caller check budgets."""
    from mpq_export.inputs.export import config_layers, find_scheduler_config, is_diffusers_folder, read_unet_config
    from mpq_export.inputs.sd_pipeline import check_pipeline, is_pipeline_folder, read_pipeline

    if not os.path.exists(cfg.model):
        raise MPQError(f"model not found: {cfg.model} (give an .onnx file, a diffusers model folder or a pipeline folder)")
    if is_optimum_folder(cfg.model):
        _check_conditioning_options(cfg, None, encoded=False)
        return ModelPreview(None, None, None, os.path.abspath(cfg.model), model_schedule(cfg.scheduler_config, None), [])
    pipe = read_pipeline(cfg.model) if is_pipeline_folder(cfg.model) else None
    unet_dir = pipe.unet_dir if pipe else cfg.model
    if not is_diffusers_folder(unet_dir):
        _check_conditioning_options(cfg, None, encoded=False)
        return ModelPreview(None, None, None, None, model_schedule(cfg.scheduler_config, None), [])
    class_name = read_unet_config(unet_dir).get("_class_name") or None
    if pipe is not None:
        check_pipeline(pipe, class_name, PIPELINE_DENOISERS, encode=cfg.calib_data is None)
    _check_conditioning_options(cfg, class_name, encoded=pipe is not None and cfg.calib_data is None)
    sched = cfg.scheduler_config or (pipe.scheduler_config if pipe else None) or find_scheduler_config(unet_dir)
    schedule = model_schedule(sched, class_name)
    return ModelPreview(class_name, config_layers(unet_dir), pipe, None, schedule, schedule_notes(schedule))


def _check_conditioning_options(cfg: ModelRequest, class_name: str | None, encoded: bool) -> None:
    """Options the input cannot honour, refused rather than ignored."""
    from mpq_export.inputs.export import GUIDANCE_INPUT_MODELS

    if cfg.calib_data is not None and cfg.seq_len is not None:
        raise MPQError(f"--seq-len {cfg.seq_len}: the conditioning comes from --calib-data, whose arrays set its length; "
                       f"drop --seq-len (it sets the length of stand-in conditioning)")
    if encoded and cfg.seq_len is not None:
        raise MPQError(f"--seq-len {cfg.seq_len}: the pipeline's prompts are encoded at its text encoders' own length, "
                       f"which the model then sees; drop --seq-len (it sets the length of stand-in conditioning)")
    if class_name in GUIDANCE_INPUT_MODELS and cfg.guidance_scale not in (None, 1, 1.0):
        raise MPQError(f"--guidance-scale {cfg.guidance_scale:g}: a {class_name} takes its guidance as an input "
                       f"(`guidance`, distilled: FluxPipeline's 3.5), not as classifier-free guidance over two rows; "
                       f"drop --guidance-scale (--calib-data may give the guidance input's values)")


def model_schedule(path: str | None, class_name: str | None):
    """The noise schedule of `path`, refused when it does not fit the model: a flow-matching transformer sampled
    as a noise predictor (or the other way round) calibrates along a trajectory the model never runs."""
    from mpq_export.inputs.export import FLOW_MODELS
    from mpq_export.runtime.sampler import NoiseSchedule

    schedule = NoiseSchedule.from_config(path)
    if class_name is None:
        return schedule
    if class_name in FLOW_MODELS and not schedule.flow_matching:
        raise MPQError(f"{class_name} is trained by flow matching, but its scheduler config ({path or 'none found'}) "
                       f"names {schedule.scheduler_class or 'no flow-matching scheduler'}; give the "
                       f"FlowMatchEulerDiscreteScheduler scheduler_config.json its pipeline ships (--scheduler-config)")
    if class_name not in FLOW_MODELS and schedule.flow_matching:
        raise MPQError(f"{class_name} predicts noise, but the scheduler config {path} is flow matching's; give the "
                       f"scheduler_config.json its pipeline ships (--scheduler-config)")
    return schedule


def schedule_notes(schedule) -> list[str]:
    """What the report says of a pipeline's own sampler that calibration does not run."""
    known = ("", "DDIMScheduler", "FlowMatchEulerDiscreteScheduler")
    if schedule.scheduler_class in known:
        return []
    return [f"the scheduler config names {schedule.scheduler_class}; calibration and validation sample its noise "
            f"schedule with DDIM (the noise levels the model sees are the schedule's; another solver's path between "
            f"them differs little)"]


def prepare_model(cfg: ModelRequest, cache_dir: str | None) -> PreparedModel:
    """The FP32 ONNX of cfg.model: the file itself, or a diffusers UNet (alone or in a pipeline folder)
    exported once per content hash; for a text-to-image pipeline also its prompts, encoded once."""
    from mpq_export.inputs.export import is_diffusers_folder, read_unet_config
    from mpq_export.inputs.sd_pipeline import is_pipeline_folder, read_pipeline

    if not os.path.exists(cfg.model):
        raise MPQError(f"model not found: {cfg.model} (give an .onnx file, a diffusers model folder or a pipeline folder)")
    if is_optimum_folder(cfg.model):
        return _optimum_input(cfg)
    pipe = read_pipeline(cfg.model) if is_pipeline_folder(cfg.model) else None
    unet_dir = pipe.unet_dir if pipe else cfg.model
    if cfg.prompts is not None and pipe is None:
        raise MPQError("--prompts needs a diffusers pipeline folder (its text encoder encodes them); for a bare UNet "
                       "give encoded prompts with --calib-data FILE.npz")
    if cfg.prompts is not None and cfg.calib_data is not None:
        raise MPQError("give --prompts or --calib-data, not both")
    if not is_diffusers_folder(unet_dir):
        if os.path.isdir(unet_dir):
            inner = os.path.join(unet_dir, "unet")
            if is_diffusers_folder(inner):  # unet/ and scheduler/ saved without the pipeline's model_index.json
                raise MPQError(f"{cfg.model} has no model_index.json but holds a diffusers UNet: give {inner} "
                               f"(a scheduler/ beside it is found)")
            onnx_files = sorted(e for e in os.listdir(unet_dir) if e.endswith(".onnx"))
            if len(onnx_files) == 1:  # a folder an ONNX export was saved into
                raise MPQError(f"{cfg.model} is a folder without config.json or model_index.json; give the ONNX "
                               f"file it holds: {os.path.join(cfg.model, onnx_files[0])}")
            raise MPQError(f"{cfg.model} is a folder without config.json or model_index.json; give an .onnx file, a "
                           f"diffusers model folder or a pipeline folder")
        return PreparedModel(cfg.model, cfg.scheduler_config, [])
    unet_cfg = read_unet_config(unet_dir)  # a broken config.json is a one-line error before hashing GBs
    text_conditioned = unet_cfg.get("_class_name") in TEXT_CONDITIONED
    if cfg.prompts is not None and not text_conditioned:
        raise MPQError(f"--prompts: the UNet of {cfg.model} ({unet_cfg.get('_class_name') or 'unknown'}) takes no "
                       f"text conditioning; drop --prompts")
    prompts = None
    if pipe is not None and text_conditioned and cfg.calib_data is None:
        from mpq_export.inputs.sd_pipeline import load_prompts

        prompts = load_prompts(cfg.prompts)  # a bad prompt file fails before the export
    if pipe is not None and pipe.vae_dir is not None:  # read only after validation: check it before the work
        from mpq_export.inputs.sd_pipeline import check_weight_files

        check_weight_files(pipe.vae_dir, "the pipeline's VAE")
    prepared = _export_once(cfg, unet_dir, cache_dir)
    if pipe is not None:
        prepared.pipeline = pipe
        if pipe.scheduler_config and not cfg.scheduler_config:
            prepared.scheduler_config = pipe.scheduler_config
        prepared.notes.insert(0, f"diffusers pipeline folder {pipe.root} ({pipe.class_name or 'no _class_name'})")
        if prompts is not None:
            from mpq_export.inputs.sd_pipeline import encode_prompts

            try:
                # without a cache the export lives in temp_dir, removed at the end of the run: so do these
                size = unet_cfg.get("sample_size") or 64
                latent = cfg.resolution or ((size, size) if isinstance(size, int) else tuple(size))
                pixels = tuple(int(d) * pipe.vae_scale_factor() for d in latent)  # SDXL's time_ids
                prompt_dir = cache_dir if cache_dir and is_writable(cache_dir) else None
                if prompt_dir is None and prepared.temp_dir is None:  # a read-only cache: this run only
                    prepared.temp_dir = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}prompts-{os.getpid()}-")
                emb = encode_prompts(pipe, prompts, prompt_dir or prepared.temp_dir, cache_dir, pixels)
            except BaseException:
                if prepared.temp_dir:
                    shutil.rmtree(prepared.temp_dir, ignore_errors=True)
                raise
            prepared.calib_data = emb.path
    return prepared


def is_optimum_folder(path: str) -> bool:
    """An ONNX pipeline folder as Optimum exports and loads it: model_index.json beside unet/model.onnx."""
    return os.path.isfile(os.path.join(path, "model_index.json")) and os.path.isfile(os.path.join(path, "unet", "model.onnx"))


def _optimum_input(cfg: ModelRequest) -> PreparedModel:
    """An Optimum ONNX pipeline folder: its UNet is already ONNX (nothing to export); its text encoder is ONNX
    too, which the prompt encoder (torch) does not run, so conditioning comes from --calib-data."""
    if cfg.prompts is not None:
        raise MPQError(f"--prompts: {cfg.model} is an Optimum ONNX folder, whose text encoder mpq-export does not run; "
                       f"give its encoded prompts with --calib-data FILE.npz (calib_data/README.md), or the diffusers "
                       f"pipeline folder it was exported from")
    root = os.path.abspath(cfg.model)
    sched = os.path.join(root, "scheduler", "scheduler_config.json")
    notes = [f"Optimum ONNX pipeline folder {root}: the UNet is unet/model.onnx"]
    if cfg.calib_data is None:
        notes.append("its prompts were not encoded (the folder's text encoder is ONNX): give --calib-data for "
                     "calibration on real prompt embeddings")
    size = None
    try:
        with open(os.path.join(root, "unet", "config.json")) as f:
            s = json.load(f).get("sample_size")
        size = (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1])) if s else None
    except (OSError, ValueError, TypeError, AttributeError, IndexError):
        pass  # without it, a dynamic sample size asks for --resolution (calibrate.sample_shape)
    return PreparedModel(os.path.join(root, "unet", "model.onnx"),
                         cfg.scheduler_config or (sched if os.path.isfile(sched) else None), notes,
                         optimum_folder=root, default_resolution=size)


_IDENTITY = "identity.json"
# denoisers whose pipeline folder's prompts are encoded for calibration
TEXT_CONDITIONED = ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel", "PixArtTransformer2DModel")


def _export_identity(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, _IDENTITY)) as f:
            return json.load(f).get("source_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _export_once(cfg: ModelRequest, unet_dir: str, cache_dir: str | None) -> PreparedModel:
    """The FP32 ONNX of a diffusers UNet folder, exported once per content hash (in the cache)."""
    from mpq_export.inputs.export import EXPORT_VERSION, export_diffusers, find_scheduler_config

    h = hashlib.sha256()
    for name in sorted(os.listdir(unet_dir)):
        p = os.path.join(unet_dir, name)
        if os.path.isfile(p):  # SD-sized weights are GBs: hashed once, remembered in the cache
            h.update(name.encode())
            h.update(file_sha256(p, cache_dir).encode())
    h.update(f"exporter {EXPORT_VERSION}".encode())  # what the same folder exports to changes with the exporter
    temp_dir = None if cache_dir else tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}export-{os.getpid()}-")
    folder = os.path.join(cache_dir or temp_dir, f"export-{h.hexdigest()[:20]}")
    onnx_path = os.path.join(folder, "model.onnx")
    sched = cfg.scheduler_config or find_scheduler_config(unet_dir)
    source = os.path.abspath(unet_dir)
    if os.path.exists(onnx_path):
        from mpq_export.util.onnx_io import external_data_problem

        try:  # a truncated or damaged export is healed, not reused (checked without loading the weights)
            problem = external_data_problem(load_onnx(onnx_path, load_weights=False), folder)
        except MPQError as e:
            problem = str(e)
        if problem is None and _export_identity(folder) != h.hexdigest():
            problem = "it does not say it was made from this model"
        if problem is None:
            log.info("[export] reusing %s", onnx_path)
            return PreparedModel(onnx_path, sched, [f"exported from diffusers folder {source} (cached export)"])
        log.warning("[export] not reusing the cached export %s (%s); exporting again", onnx_path, problem)
        shutil.rmtree(folder, ignore_errors=True)
    if cache_dir and not is_writable(cache_dir):  # the cache is an optimisation: export for this run only
        log.warning("[cache] cannot write the cache %s; exporting for this run only", cache_dir)
        temp_dir = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}export-{os.getpid()}-")
        folder = os.path.join(temp_dir, os.path.basename(folder))
        onnx_path = os.path.join(folder, "model.onnx")
    tmp = temporary_name(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("[export] %s -> ONNX (torch)", unet_dir)
    try:
        res = export_diffusers(unet_dir, os.path.join(tmp, "model.onnx"))
        with open(os.path.join(tmp, _IDENTITY), "w") as f:  # what it was made from, compared on reuse
            json.dump({"source_sha256": h.hexdigest()}, f)
        try:
            os.replace(tmp, folder)
        except OSError:  # another run exported the same model meanwhile (and may be reading it): use theirs
            if not os.path.exists(onnx_path):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    log.info("[export] %s, %d parameters, %.1fs", res.model_class, res.params, res.seconds)
    notes = [f"exported from diffusers folder {source} ({res.model_class})"]
    if temp_dir:
        notes.append("the FP32 export was made for this run only (no cache) and is kept in the output folder as "
                     "fp32/model.onnx, which the report's model and Polygraphy commands name")
    return PreparedModel(onnx_path, sched, notes, temp_dir)
