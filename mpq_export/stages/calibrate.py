"""calibrate stage: run the FP32 model inside its real sampler (DDIM or flow matching) and stream per-layer statistics.

At K evenly spaced steps of an S-step trajectory (N samples from fixed seeds; 2N UNet rows under
classifier-free guidance) we keep, per quantizable layer, the Gram matrix of its flattened output
over the rows (float64; what ORM needs), per activation tensor a histogram of |x| with its max and
energy (`act_ranges`: the INT8 clipping thresholds are chosen from these afterwards, by any method,
without re-running), and the layers' input statistics for GPTQ. Raw activations are never kept:
the model runs over chunks of rows sized to `mem_budget_mb` with every needed tensor fetched in the
same call (one pass per profiled step, as the bare sampler makes), and each tensor is reduced at once.
Grams are exact while one step's layer outputs over all rows fit `gram_mem_mb`; beyond that they come
from fixed-seed sketches of the rows (`GramSketch`), so memory depends on neither N nor the
resolution beyond one chunk. The sampler's own inputs at the profiled steps are kept too (they are
small) so the sensitivity scorer and Polygraphy can reuse them without re-running the sampler.
Results are cached on disk keyed by the model's hash and every setting that changes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from mpq_export.stages.act_ranges import ActivationHistograms
from mpq_export.util.errors import MPQError, require_int
from mpq_export.core.model_info import ModelInfo
from mpq_export.util.progress import Progress, log
from mpq_export.runtime.ort import RuntimeSettings, build_feeds, check_finite, fixed_batch, ort_session, run_model
from mpq_export.util.cache import file_sha256, model_sha256, write_entry
from mpq_export.runtime.sampler import NoiseSchedule, guided, initial_noise, sampler_for, timestep_value
from mpq_export.formats import CONV_OPS, GEMM_OPS
from mpq_export.formats.base import LayerCalibration
from mpq_export.formats.inputs import INPUT_QUANTIZERS
from mpq_export.inputs.conditioning import load_conditioning

CACHE_VERSION = 10  # 10: per-channel maxima and mean squares of MatMul/Gemm inputs


@dataclass(frozen=True)
class CalibrationSettings:
    steps: int = 50  # sampler steps of the trajectory
    timesteps: int = 10  # K profiled steps, evenly spaced
    samples: int = 32  # N samples per profiled step
    seed: int = 0
    resolution: tuple[int, int] | None = None  # (H, W) when the model does not fix it
    seq_len: int | None = None  # encoder_hidden_states length when dynamic
    mem_budget_mb: int = 256  # bytes of layer outputs fetched per onnxruntime call
    # classifier-free guidance of the sampler: != 1 runs the UNet on an unconditional and a conditional
    # row per sample, as the deployed pipeline does, and gathers statistics from both (sampler.guided).
    # None: the pipeline folder's type default when its prompts are encoded, else 1 (resolved_guidance)
    guidance_scale: float | None = None
    # ORM's N x N Grams from outputs fetched a chunk of rows at a time: while every row's outputs of one
    # step fit in `gram_mem_mb` they are kept whole until the step is done (exact Grams); beyond that
    # each row's flattened output is reduced to a `sketch_dim`-d signed-hash sketch (GramSketch), so
    # memory stops growing with N and the resolution (docs/design.md measures what that moves)
    gram_mem_mb: int = 1024
    sketch_dim: int = 8192
    # also the ranges of attention's activation x activation MatMul inputs (Q, K, V), for FP8 attention
    # (QuantizeSettings.fp8_attention); off otherwise: they are as large as the layer inputs
    attention_inputs: bool = False

    def __post_init__(self):
        for name, flag in (("steps", "--steps"), ("timesteps", "--timesteps"), ("samples", "--samples"),
                           ("mem_budget_mb", "--calib-mem-mb")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise MPQError(f"{flag} must be a positive integer, got {v!r}")
        if self.samples < 4:
            raise MPQError(f"--samples must be at least 4 for the ORM Grams (got {self.samples})")
        if self.timesteps > self.steps:
            raise MPQError(f"--timesteps {self.timesteps} exceeds --steps {self.steps}: profile at most every step")
        if self.seq_len is not None and self.seq_len <= 0:
            raise MPQError(f"--seq-len must be positive, got {self.seq_len}")
        for v, flag in ((self.sketch_dim, "--sketch-dim"), (self.gram_mem_mb, "--gram-mem-mb")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise MPQError(f"{flag} must be an integer >= 0, got {v!r}")
        if self.sketch_dim == 0:
            raise MPQError("--sketch-dim must be positive (exact Grams: raise --gram-mem-mb instead)")
        g = self.guidance_scale
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not np.isfinite(g) or g < 1):
            raise MPQError(f"--guidance-scale must be a number >= 1 (1: no guidance), got {g!r}")
        if self.resolution is not None and (len(self.resolution) != 2 or min(self.resolution) <= 0):
            raise MPQError(f"--resolution must be H or HxW with positive sizes, got {self.resolution}")
        require_int(self.seed, "--calib-seed", 0)  # numpy's generators take no negative seeds

    @property
    def guidance(self) -> float:
        """The sampler's guidance scale (None: 1, no guidance)."""
        return 1.0 if self.guidance_scale is None else float(self.guidance_scale)


@dataclass
class CalibrationStats:
    layer_names: list[str]
    timesteps: np.ndarray  # [K] model timesteps t of the profiled steps
    step_indices: np.ndarray  # [K] indices into the sampler's steps
    grams: np.ndarray  # [K, L, N, N] float64, uncentred Y Y^T of each layer output
    act_hist: ActivationHistograms  # per activation tensor and profiled step: |x| histogram, max, energy
    inputs: dict[str, np.ndarray]  # sample: [K, N, C, H, W]; conditioning name: [N, ...]
    outputs: np.ndarray  # [K, N, C, H, W] FP32 model output at each profiled x_t
    hessians: dict[str, np.ndarray]  # layer -> sum_t H_t / tr(H_t) of its input, float32 (with input_hessians)
    settings: CalibrationSettings
    schedule: NoiseSchedule
    conditioning_source: str
    model_sha256: str
    seconds: float = 0.0
    cached: bool = False
    rows_per_call: int = 0  # UNet rows per onnxruntime call (the memory budget's chunk)
    gram_sketch_dim: int = 0  # 0: exact Grams; else the sketch dimension they came from
    # where calibration's seconds went: hashing the model (cache key), loading its session, the
    # onnxruntime calls, and reducing fetched tensors to GPTQ statistics, histograms and Grams
    time_split: dict[str, float] = field(default_factory=dict)
    identity: dict = field(default_factory=dict)  # cache_identity: what the statistics were made from
    # MatMul/Gemm inputs: tensor -> [K] max |x| and mean x^2 per input channel (the last axis), over every
    # row of every profiled step (what smoothing, formats/smooth.py, is chosen from)
    channel_amax: dict[str, np.ndarray] = field(default_factory=dict)
    channel_ms: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.grams.shape[2])

    def for_layer(self, layer, ranges=None) -> LayerCalibration:
        """Everything calibration knows about one layer's input, for its formats (formats/base.py); the
        thresholds of its input quantizers come from `ranges` (act_ranges.ActivationRanges) when given."""
        x = layer.activation_input
        counts, energy, step_counts, step_energy = None, 0.0, None, None
        if x in self.act_hist:
            i = self.act_hist.names.index(x)
            step_counts, step_energy = self.act_hist.counts[i], self.act_hist.sumsq[i]
            counts, energy = step_counts.sum(0), float(step_energy.sum())
        thresholds = None
        if ranges is not None and x in ranges.amax:
            thresholds = {q.name: q.threshold(ranges, x) for q in INPUT_QUANTIZERS if not q.per_channel_probe}
        return LayerCalibration(hessian=self.hessians.get(layer.name), channel_amax=self.channel_amax.get(x),
                                channel_ms=self.channel_ms.get(x), counts=counts, energy=energy, thresholds=thresholds,
                                step_counts=step_counts, step_energy=step_energy)

    def save(self, path: str) -> None:
        meta = {"layer_names": self.layer_names, "act_names": self.act_hist.names, "settings": asdict(self.settings),
                "schedule": asdict(self.schedule), "conditioning_source": self.conditioning_source,
                "model_sha256": self.model_sha256, "seconds": self.seconds, "version": CACHE_VERSION,
                "rows_per_call": self.rows_per_call, "gram_sketch_dim": self.gram_sketch_dim,
                "input_names": sorted(self.inputs), "hessian_layers": sorted(self.hessians),
                "time_split": self.time_split, "identity": self.identity, "channel_tensors": sorted(self.channel_amax)}
        np.savez(path, meta=np.array(json.dumps(meta)), timesteps=self.timesteps, step_indices=self.step_indices,
                 grams=self.grams, outputs=self.outputs, act_counts=self.act_hist.counts, act_amax=self.act_hist.amax,
                 act_sumsq=self.act_hist.sumsq, **{f"in_{k}": v for k, v in self.inputs.items()},
                 **{f"h_{i}": self.hessians[n] for i, n in enumerate(sorted(self.hessians))},
                 **{f"ca_{i}": self.channel_amax[n] for i, n in enumerate(sorted(self.channel_amax))},
                 **{f"cm_{i}": self.channel_ms[n] for i, n in enumerate(sorted(self.channel_amax))})

    @classmethod
    def load(cls, path: str) -> "CalibrationStats":
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            s = meta["settings"]
            s["resolution"] = tuple(s["resolution"]) if s["resolution"] else None
            return cls(layer_names=meta["layer_names"], timesteps=z["timesteps"], step_indices=z["step_indices"],
                       grams=z["grams"], act_hist=ActivationHistograms(meta["act_names"], z["act_counts"],
                                                                       z["act_amax"], z["act_sumsq"]),
                       inputs={k: z[f"in_{k}"] for k in meta["input_names"]}, outputs=z["outputs"],
                       hessians={n: z[f"h_{i}"] for i, n in enumerate(meta.get("hessian_layers", []))},
                       settings=CalibrationSettings(**s), schedule=NoiseSchedule(**meta["schedule"]),
                       conditioning_source=meta["conditioning_source"], model_sha256=meta["model_sha256"],
                       rows_per_call=int(meta.get("rows_per_call", 0)),
                       gram_sketch_dim=int(meta.get("gram_sketch_dim", 0)),
                       time_split=meta.get("time_split", {}), seconds=meta["seconds"], cached=True,
                       identity=meta.get("identity", {}),
                       channel_amax={n: z[f"ca_{i}"] for i, n in enumerate(meta.get("channel_tensors", []))},
                       channel_ms={n: z[f"cm_{i}"] for i, n in enumerate(meta.get("channel_tensors", []))})


def _file_sha(path: str | None) -> str:
    if path is None:
        return ""
    if not os.path.isfile(path):
        raise MPQError(f"--calib-data file not found: {path}")
    return file_sha256(path)


def cache_key(identity: dict) -> str:
    """The entry's file name: a hash of its identity (cache_identity)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def cache_identity(sha: str, settings: CalibrationSettings, schedule: NoiseSchedule, calib_data: str | None,
                   input_statistics: bool, info: ModelInfo | None = None) -> dict:
    """Everything a calibration entry's content depends on: the model's content hash, the settings, the
    schedule, the conditioning file's hash, and which inputs are the sample, the timestep and the
    conditioning (--sample-name picks another input of the same model). Stored in the entry and compared
    on every read: an entry is used only when it was made from exactly this."""
    d = asdict(settings)
    d["input_hessians"] = input_statistics
    if not d["attention_inputs"]:  # entries made before the field existed stay valid
        d.pop("attention_inputs")
    # grouping changes memory, not results: Grams and histograms are the same for any chunking; GPTQ's
    # rows are drawn per call, so its H is an equally good sample, not the same one (not worth a rerun)
    d.pop("mem_budget_mb")
    s = asdict(schedule)
    s.pop("source")
    inputs = None
    if info is not None:
        inputs = {"sample": info.sample.name, "timestep": info.timestep.name,
                  "conditioning": [c.name for c in info.conditioning]}
    # through JSON so that the stored copy compares equal (tuples become lists)
    return json.loads(json.dumps({"v": CACHE_VERSION, "model": sha, "settings": d, "schedule": s,
                                  "calib_data": _file_sha(calib_data), "inputs": inputs}, sort_keys=True))


def _augmented_model(info: ModelInfo, extra_outputs: list[str]) -> tuple[bytes, str | None]:
    """The FP32 model with the given intermediate tensors added as graph outputs (serialised)."""
    import onnx

    from mpq_export.util.onnx_io import load_onnx

    model = load_onnx(info.path, load_weights=False)
    existing = {o.name for o in model.graph.output}
    for name in extra_outputs:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    # weights stay where they are on disk; onnxruntime reads them from the model's folder
    ext_dir = os.path.dirname(info.path) if info.has_external_data else None
    return model.SerializeToString(), ext_dir


class GramSketch:
    """Fixed-seed sketches whose inner products estimate those of the rows they sketch.

    A row y of D values becomes z[j] = sum over d = j (mod m) of s[d] y[d], with signs s[d] = +-1
    drawn per tensor from a fixed seed (a CountSketch with a folding hash): E[<z, z'>] = <y, y'> and
    the error shrinks like 1/sqrt(m). Rows of D <= m values are kept whole, so their Grams are exact.
    m = 0 keeps every row whole (exact Grams). The signs are drawn once per tensor and reused for
    every row, chunk and step, so rows sketched in different calls stay comparable.
    """

    def __init__(self, dim: int, seed: int):
        self.dim, self.seed = dim, seed
        self._signs: dict[str, np.ndarray] = {}

    def rows(self, name: str, y: np.ndarray) -> np.ndarray:
        """[rows, D] -> [rows, min(D, m)] float32."""
        d = y.shape[1]
        if not self.dim or d <= self.dim:
            return np.asarray(y, dtype=np.float32)  # no copy of a float32 output (the hot path)
        if name not in self._signs:
            h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng([self.seed, h])
            self._signs[name] = np.where(rng.random(d) < 0.5, -1.0, 1.0).astype(np.float32)
        folds = -(-d // self.dim)
        z = np.zeros((y.shape[0], folds * self.dim), dtype=np.float32)
        np.multiply(y, self._signs[name], out=z[:, :d])
        return z.reshape(y.shape[0], folds, self.dim).sum(axis=1)


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def sample_shape(info: ModelInfo, resolution: tuple[int, int] | None) -> tuple[int, int, int]:
    hw = resolution or info.sample_size
    if hw is None:
        raise MPQError(f"{info.path} has a dynamic sample size and no recorded default; give --resolution H (or HxW)")
    c = info.sample.shape[1]
    if not isinstance(c, int):
        raise MPQError(f"input '{info.sample.name}' has a dynamic channel count; re-export with fixed channels")
    return (c, int(hw[0]), int(hw[1]))


class _TimeSplit(dict):
    """Seconds per part of calibration (CalibrationStats.time_split); `with split("part"):` adds to one."""

    @contextmanager
    def __call__(self, part: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self[part] = self.get(part, 0.0) + time.perf_counter() - t


def calibrate(info: ModelInfo, settings: CalibrationSettings, schedule: NoiseSchedule,
              calib_data: str | None = None, cache_dir: str | None = None, runtime: RuntimeSettings = RuntimeSettings(),
              input_statistics: bool = True) -> CalibrationStats:
    """Profile the FP32 model along its real sampler's trajectory; load from cache when nothing changed.
    `input_statistics`: gather each layer's input statistics H = X^T X, which only GPTQ rounding reads."""
    settings = replace(settings, guidance_scale=settings.guidance)  # None and 1 are one calibration
    split = _TimeSplit()
    with split("hash"):
        sha = model_sha256(info.path, cache_dir)
    identity = cache_identity(sha, settings, schedule, calib_data, input_statistics, info)
    key = cache_key(identity)
    cache_path = os.path.join(cache_dir, f"calib-{key}.npz") if cache_dir else None
    cached = _load_cached(cache_path, info, identity)
    if cached is None and cache_dir and not input_statistics:
        # statistics gathered with GPTQ's input statistics serve a run that needs none (nearest rounding
        # after a gptq run of the same model and settings): no second calibration
        with_h = {**identity, "settings": {**identity["settings"], "input_hessians": True}}
        cached = _load_cached(os.path.join(cache_dir, f"calib-{cache_key(with_h)}.npz"), info, with_h)
    if cached is not None:
        # the entry matched on everything that shapes the statistics; memory per call is this run's
        cached.settings = replace(cached.settings, mem_budget_mb=settings.mem_budget_mb)
        return cached

    t0 = time.perf_counter()
    n = settings.samples
    if n < 4:
        raise MPQError(f"--samples must be at least 4 for the ORM Grams (got {n})")
    shape = sample_shape(info, settings.resolution)
    sampler = sampler_for(schedule, settings.steps, shape)
    profiled = sampler.profiled_indices(settings.timesteps)
    guidance = settings.guidance
    cond, cond_source = load_conditioning(info, calib_data, n, settings.seed, settings.seq_len, guidance)
    rows = n * (2 if guidance != 1 else 1)  # what the UNet sees per call: both CFG branches

    act_tensors = _activation_tensors(info, settings.attention_inputs)
    graph_inputs = {info.sample.name, info.timestep.name, *(c.name for c in info.conditioning)}
    layer_outputs = [l.output for l in info.layers]
    wanted = list(dict.fromkeys(layer_outputs + [a for a in act_tensors if a not in graph_inputs]))
    with split("session"):
        model_bytes, ext_dir = _augmented_model(info, wanted)
        sess = ort_session(model_bytes, runtime.threads, ext_dir, low_memory=True, device=runtime.device)
    with split("onnxruntime"):
        per_row = _bytes_per_row(sess, info, wanted, cond, initial_noise(settings.seed, fixed_batch(info) or 1, shape),
                                 timestep_value(sampler.timesteps[0]))
    chunk = _rows_per_call(info, rows, settings.mem_budget_mb, sum(per_row.values()))
    exact_bytes = rows * sum(per_row[name] for name in dict.fromkeys(layer_outputs))
    sketched = exact_bytes > settings.gram_mem_mb * (1 << 20)
    log.info("[calibrate] %d layers, %d activation tensors, %d row(s) per onnxruntime call, %d rows (N=%d), "
             "K=%d of %d steps, Grams %s", len(layer_outputs), len(act_tensors), chunk, rows, n, len(profiled),
             settings.steps, f"from {settings.sketch_dim}-d sketches (exact would keep {exact_bytes / 2**20:.0f} MB "
             f"per step; --gram-mem-mb)" if sketched else "exact")
    _check_statistics_fit(len(info.layers), len(profiled), rows, shape, n)

    profiler = _TrajectoryProfiler(info, sess, cond, wanted, act_tensors, chunk, rows, profiled, shape, split,
                                   _InputStatistics(info, input_statistics, settings.seed, rows),
                                   GramSketch(settings.sketch_dim if sketched else 0, settings.seed))
    with Progress("calibrate", settings.steps) as p:
        sampler.sample(initial_noise(settings.seed, n, shape), guided(profiler, guidance),
                       on_step=lambda d: p.update(d, f"steps (t={sampler.timesteps[d - 1]})"))
    hessians = {}
    if profiler.input_stats.sums:
        with split("gptq_statistics"):
            hessians = profiler.input_stats.result()
    seconds = time.perf_counter() - t0
    split["other"] = seconds - sum(v for p, v in split.items() if p != "hash")  # the sampler, copies, checks
    stats = CalibrationStats(
        layer_names=[l.name for l in info.layers], timesteps=sampler.timesteps[profiled].copy(),
        step_indices=profiled.astype(np.int64), grams=profiler.grams, act_hist=profiler.hist,
        inputs={info.sample.name: profiler.xs, **cond}, outputs=profiler.outs, hessians=hessians, settings=settings,
        schedule=schedule, conditioning_source=cond_source, model_sha256=sha, seconds=seconds, rows_per_call=chunk,
        gram_sketch_dim=settings.sketch_dim if sketched else 0, time_split=dict(split), identity=identity,
        channel_amax=profiler.channels.amax, channel_ms=profiler.channels.mean_squares())
    if cache_path:
        _save_cached(stats, cache_path)
    return stats


def _activation_tensors(info: ModelInfo, attention_inputs: bool = False) -> list[str]:
    """The tensors that get an INT8 Q/DQ: layer inputs and residual-Add inputs, and conv outputs too
    (on the onnxruntime target its integer convolution, QLinearConv, writes INT8: quantize.py); with
    `attention_inputs`, the attention MatMuls' Q, K and V (FP8 attention)."""
    return sorted({l.activation_input for l in info.layers}
                  | {t for r in info.residual_adds for t in r.inputs}
                  | {l.output for l in info.layers if l.op_type in CONV_OPS}
                  | (set(info.attention_inputs) if attention_inputs else set()))


def _load_cached(cache_path: str | None, info: ModelInfo, identity: dict) -> CalibrationStats | None:
    if not cache_path or not os.path.exists(cache_path):
        return None
    try:
        stats = CalibrationStats.load(cache_path)
    except Exception as e:  # a corrupt or old cache entry is recomputed, not fatal
        log.warning("[calibrate] ignoring unreadable cache %s (%s)", cache_path, e)
        return None
    if stats.identity != identity or stats.layer_names != [l.name for l in info.layers]:
        # the name is a hash of the identity: a mismatch is another model's entry copied or renamed
        log.warning("[calibrate] ignoring cache %s: it was made from another model or other settings", cache_path)
        return None
    log.info("[calibrate] reusing cached statistics %s", cache_path)
    return stats


def _save_cached(stats: CalibrationStats, cache_path: str) -> None:
    write_entry(cache_path, stats.save, "calibration cache", suffix=".npz")  # np.savez adds .npz otherwise


def _bytes_per_row(sess, info: ModelInfo, wanted: list[str], cond: dict, x_probe: np.ndarray, t: int) -> dict[str, int]:
    """One small call measures every fetched tensor per UNet row (so the chunk fits the memory budget),
    and checks that the model predicts noise of the sample's shape."""
    probe = run_model(sess, info, wanted, x_probe, t, cond)
    per_row = {name: int(a.nbytes) // x_probe.shape[0] for name, a in zip(wanted, probe)}
    del probe
    (eps_probe,) = run_model(sess, info, [info.output], x_probe, t, cond)
    if eps_probe.shape != x_probe.shape:
        raise MPQError(f"the model's output '{info.output}' has shape {list(eps_probe.shape)} for a sample of shape "
                       f"{list(x_probe.shape)}; a diffusion denoiser predicts noise (or velocity) of the sample's shape (is "
                       f"--sample-name the noisy sample, and the first output the prediction?)")
    return per_row


def _rows_per_call(info: ModelInfo, rows: int, mem_budget_mb: int, bytes_per_row: int) -> int:
    """Every call fetches everything, over at most this many rows: the batch is bounded by the memory
    budget, not by N, and each profiled step costs one pass over its rows."""
    chunk = int(max(1, min(rows, mem_budget_mb * (1 << 20) // max(1, bytes_per_row))))
    b = fixed_batch(info)
    if b and chunk % b:
        chunk = min(rows, max(b, chunk // b * b))  # whole fixed-size batches
    return chunk


def _check_statistics_fit(layers: int, steps: int, rows: int, shape: tuple, n: int) -> None:
    need = 8 * steps * layers * rows * rows + 2 * 4 * steps * rows * int(np.prod(shape))
    avail = _physical_memory()
    if avail and need > 0.5 * avail:
        raise MPQError(f"--samples {n} needs {need / 2**30:.1f} GiB of statistics (N x N Grams for {layers} layers at "
                       f"{steps} steps, plus the stored inputs) on a machine with {avail / 2**30:.0f} GiB; lower "
                       f"--samples or --timesteps")


class _InputStatistics:
    """GPTQ's per-layer input statistics H = sum X^T X / tr (rounding.HessianSum), from each fetched layer
    input: at most MAX_ROWS rows per layer and step, drawn with a fixed seed, within HESSIAN_MEM_MB."""

    def __init__(self, info: ModelInfo, enabled: bool, seed: int, rows: int):
        self.readers: dict[str, list] = {}  # tensor -> the layers that read it
        if enabled:
            for l in info.layers:
                self.readers.setdefault(l.activation_input, []).append(l)
        self.rng = np.random.default_rng(seed + 104729)
        self.rows = rows  # per step: each call adds its share of MAX_ROWS
        self.sums: dict = {}  # layer -> HessianSum while the sampler runs
        self.bytes = 0

    def add(self, name: str, arr: np.ndarray) -> None:
        from mpq_export.stages.rounding import HESSIAN_MEM_MB, MAX_ROWS, HessianSum, layer_rows

        quota = -(-MAX_ROWS * arr.shape[0] // self.rows)  # this chunk's share of the step's rows
        for l in self.readers.get(name, ()):
            if l.name not in self.sums:
                k = int(np.prod(l.weight_shape)) // l.weight_shape[l.weight_axis]
                if self.bytes + 4 * k * k > HESSIAN_MEM_MB * (1 << 20):
                    continue  # over the memory cap: this layer keeps round-to-nearest
            x = layer_rows(arr, l, self.rng, quota)
            if x is None:
                continue
            if l.name not in self.sums:
                self.bytes += 4 * x.shape[1] ** 2
                self.sums[l.name] = HessianSum(x.shape[1])
            # normalised per call: every step is split into the same chunks, so every step still
            # weighs the same (GPTQ itself works in float64)
            self.sums[l.name].add(x)

    def result(self) -> dict[str, np.ndarray]:
        """layer -> its symmetric H in the weight's column order; each sum is freed as its result is made
        (no 2x peak)."""
        from mpq_export.stages.rounding import weight_order

        by_name = {l.name: l for ls in self.readers.values() for l in ls}
        out = {}
        for name in list(self.sums):
            acc = self.sums.pop(name)
            if acc.calls:
                h = acc.result()
                p = weight_order(by_name[name])
                out[name] = h if p is None else np.ascontiguousarray(h[np.ix_(p, p)])
            del acc
        return out


class _ChannelStatistics:
    """Per input channel (the last axis) of each MatMul/Gemm input: max |x| and the sum of x^2 over rows."""

    def __init__(self, info: ModelInfo):
        self.tensors = {l.activation_input: l.weight_shape[l.reduction_axis] for l in info.layers
                        if l.op_type in GEMM_OPS}
        self.amax: dict[str, np.ndarray] = {}
        self.sumsq: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}

    def add(self, name: str, arr: np.ndarray) -> None:
        k = self.tensors.get(name)
        if k is None or arr.ndim < 2 or arr.shape[-1] != k:
            return
        flat = arr.reshape(-1, k)
        a = np.abs(flat).max(0).astype(np.float64)
        sq = np.einsum("rk,rk->k", flat, flat, dtype=np.float64)
        if name in self.amax:
            np.maximum(self.amax[name], a, out=self.amax[name])
            self.sumsq[name] += sq
            self.rows[name] += flat.shape[0]
        else:
            self.amax[name], self.sumsq[name], self.rows[name] = a, sq, flat.shape[0]

    def mean_squares(self) -> dict[str, np.ndarray]:
        return {n: self.sumsq[n] / max(self.rows[n], 1) for n in self.amax}


class _TrajectoryProfiler:
    """The sampler's model: runs the FP32 UNet over chunks of rows and, at the profiled steps, reduces
    every fetched tensor at once (Grams, histograms, GPTQ statistics) and keeps the step's x_t and
    prediction."""

    def __init__(self, info: ModelInfo, sess, cond: dict, wanted: list[str], act_tensors: list[str], chunk: int,
                 rows: int, profiled: np.ndarray, shape: tuple, split: _TimeSplit, input_stats: _InputStatistics,
                 sketch: GramSketch):
        self.info, self.sess, self.cond, self.wanted, self.chunk = info, sess, cond, wanted, chunk
        self.split, self.input_stats, self.sketch = split, input_stats, sketch
        self.channels = _ChannelStatistics(info)
        k = len(profiled)
        self.profiled = {int(i): j for j, i in enumerate(profiled)}
        self.grams = np.zeros((k, len(info.layers), rows, rows), dtype=np.float64)
        self.hist = ActivationHistograms.empty(act_tensors, k)
        self.xs = np.zeros((k, rows) + shape, dtype=np.float32)
        self.outs = np.zeros((k, rows) + shape, dtype=np.float32)
        self.layer_index: dict[str, list[int]] = {}  # output tensor -> its layers' indices
        for i, l in enumerate(info.layers):
            self.layer_index.setdefault(l.output, []).append(i)

    def __call__(self, x: np.ndarray, t: int, i: int) -> np.ndarray:
        """The prediction for the UNet's rows x (both guidance branches) at step i."""
        if i not in self.profiled:
            return np.concatenate([res[0] for _, res in self._forward(x, t, [])])
        return self._profile_step(x, t, self.profiled[i])

    def _forward(self, x: np.ndarray, t: int, names: list[str]):
        """The model on rows x, `chunk` rows per call: (first row, [prediction, *names]) per chunk."""
        for i in range(0, x.shape[0], self.chunk):
            sub = {k: v[i: i + self.chunk] for k, v in self.cond.items()}
            with self.split("onnxruntime"):
                res = run_model(self.sess, self.info, [self.info.output, *names], x[i: i + self.chunk], t, sub)
            check_finite(res[0], f"the model output at t={t}")
            yield i, res

    def _reduce(self, name: str, k: int, arr: np.ndarray) -> None:
        """A tensor's histogram and GPTQ statistics at profiled step k."""
        if name in self.hist:
            with self.split("histograms"):
                self.hist.add(name, k, arr)
        if name in self.input_stats.readers:
            with self.split("gptq_statistics"):
                self.input_stats.add(name, arr)
        if name in self.channels.tensors:
            with self.split("histograms"):
                self.channels.add(name, arr)

    def _profile_step(self, x: np.ndarray, t: int, k: int) -> np.ndarray:
        info = self.info
        self.xs[k] = x
        eps = np.zeros_like(x)
        parts: dict[str, list[np.ndarray]] = {}
        for start, res in self._forward(x, t, self.wanted):
            feeds = build_feeds(info, x[start: start + self.chunk], t, self.cond, offset=start)
            for name in (info.sample.name, *(c.name for c in info.conditioning)):  # graph inputs are not fetched
                self._reduce(name, k, feeds[name])
            eps[start: start + len(res[0])] = res[0]
            for name, arr in zip(self.wanted, res[1:]):
                check_finite(arr, f"tensor '{name}' at t={t}")
                if name in self.layer_index:
                    with self.split("grams"):
                        parts.setdefault(name, []).append(self.sketch.rows(name, arr.reshape(arr.shape[0], -1)))
                self._reduce(name, k, arr)
            del res
        with self.split("grams"):
            for name, ps in parts.items():  # the Gram of all rows, from their (sketched) outputs
                z = np.concatenate(ps).astype(np.float64)
                gram = z @ z.T
                for li in self.layer_index[name]:
                    self.grams[k, li] = gram
        self.outs[k] = eps
        return eps
