"""The samplers calibration and validation run the model in, in numpy: deterministic DDIM (eta = 0)
for noise- or v-predicting models, and flow matching's Euler sampler for velocity-predicting ones
(rectified flow: SD3, Flux), as diffusers' DDIMScheduler and FlowMatchEulerDiscreteScheduler step.

Calibration and validation both run the model inside the sampler its scheduler config names, so the
inputs x_t are the ones the model really sees, and the timesteps are in the scheduler's own units
(what the denoiser receives). Without a config: the standard linear beta schedule with T = 1000
(docs/design.md).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mpq_export.util.errors import MPQError


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
FLOW_MATCHING = "FlowMatchEulerDiscreteScheduler"  # the scheduler class that selects the flow sampler
# FlowMatchEulerDiscreteScheduler options this sampler does not implement: refused, not approximated
_FLOW_UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                     "shift_terminal", "stochastic_sampling")


@dataclass(frozen=True)
class NoiseSchedule:
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # linear | scaled_linear | squaredcos_cap_v2
    prediction_type: str = "epsilon"  # epsilon | v_prediction (DDIM; a flow model predicts the velocity)
    clip_sample: bool = True  # diffusers DDIMScheduler default; latent-model configs set it false
    steps_offset: int = 0
    source: str = "default linear schedule (T=1000, clip_sample)"
    # flow matching (kind "flow_matching"): sigma from 1 to 0, x_t = (1 - sigma) x_0 + sigma noise, the
    # model predicts the velocity; `shift` warps the sigmas (SD3: 3.0), or with `use_dynamic_shifting`
    # (Flux) an exponential shift whose mu grows with the image's token count
    kind: str = "ddpm"  # ddpm (DDIM sampler) | flow_matching (Euler sampler)
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    scheduler_class: str = ""  # the config's _class_name ("" when none was given)

    def __post_init__(self):
        """The schedule's values, checked however it was made (from_config or directly from Python)."""
        where = f" in {self.source}" if os.path.isabs(self.source) else ""
        T = self.num_train_timesteps
        if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 2:
            raise MPQError(f"num_train_timesteps{where} must be an integer >= 2, got {T!r}")
        b0, b1 = self.beta_start, self.beta_end
        if not all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 < b < 1 for b in (b0, b1)):
            raise MPQError(f"beta_start / beta_end{where} must lie in (0, 1), got {b0!r} / {b1!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise MPQError(f"unsupported beta_schedule '{self.beta_schedule}'{where} ({', '.join(BETA_SCHEDULES)})")
        if self.prediction_type not in PREDICTION_TYPES:
            raise MPQError(f"unsupported prediction_type '{self.prediction_type}'{where} ({', '.join(PREDICTION_TYPES)})")
        if self.kind not in ("ddpm", "flow_matching"):
            raise MPQError(f"unknown schedule kind '{self.kind}'{where} (ddpm, flow_matching)")
        if not (isinstance(self.shift, numbers.Real) and math.isfinite(self.shift) and 0.01 <= self.shift <= 100):
            # SD3 trains at 3.0; past these bounds every sigma sits at 0 or 1 and the sampler has nothing to do
            raise MPQError(f"shift{where} must be a number in [0.01, 100] (SD3's is 3.0), got {self.shift!r}; give the "
                           f"scheduler_config.json the pipeline was trained with")
        if self.kind == "flow_matching" and self.use_dynamic_shifting:
            lo, hi = self.base_image_seq_len, self.max_image_seq_len
            ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (lo, hi))
            if not ints or not 0 < lo < hi:
                raise MPQError(f"base_image_seq_len / max_image_seq_len{where} must be integers with 0 < base < max "
                               f"(Flux: 256 / 4096), got {lo!r} / {hi!r}; give the pipeline's own scheduler config")
            for k in ("base_shift", "max_shift"):
                v = getattr(self, k)
                if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and -10 <= v <= 10):
                    raise MPQError(f"{k}{where} must be a number in [-10, 10] (Flux: 0.5 / 1.15), got {v!r}; give the "
                                   f"pipeline's own scheduler config")

    @classmethod
    def from_config(cls, path: str | None) -> "NoiseSchedule":
        if path is None:
            return cls()
        from mpq_export.util.files import read_json_object

        cfg = read_json_object(path, "a diffusers scheduler_config.json")
        if cfg.get("_class_name") == FLOW_MATCHING:
            return cls._flow_matching(cfg, path)
        kw = {k: cfg[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                  "prediction_type", "clip_sample", "steps_offset") if k in cfg}
        for k, kind in (("num_train_timesteps", int), ("steps_offset", int), ("beta_start", float), ("beta_end", float)):
            v = kw.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or (kind is int and float(v) != int(v))):
                raise MPQError(f"'{k}' in {path} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
            if v is not None and kind is int:
                kw[k] = int(v)
        return cls(**kw, source=os.path.abspath(path), scheduler_class=str(cfg.get("_class_name") or ""))

    @classmethod
    def _flow_matching(cls, cfg: dict, path: str) -> "NoiseSchedule":
        used = [k for k in _FLOW_UNSUPPORTED if cfg.get(k)]
        if used or cfg.get("time_shift_type", "exponential") != "exponential":
            what = ", ".join(used) or f"time_shift_type {cfg.get('time_shift_type')}"
            raise MPQError(f"{path}: {FLOW_MATCHING} with {what} is not supported (plain or shifted sigmas, "
                           f"exponential dynamic shift); give a --scheduler-config without it")
        kw = {k: cfg[k] for k in ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
                                  "base_image_seq_len", "max_image_seq_len") if cfg.get(k) is not None}
        return cls(**kw, kind="flow_matching", prediction_type="epsilon", clip_sample=False,
                   source=os.path.abspath(path), scheduler_class=FLOW_MATCHING)

    @property
    def flow_matching(self) -> bool:
        return self.kind == "flow_matching"

    def alphas_cumprod(self) -> np.ndarray:
        T = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, T, dtype=np.float64)
        elif self.beta_schedule == "scaled_linear":
            betas = np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, T, dtype=np.float64) ** 2
        else:  # squaredcos_cap_v2, as diffusers' betas_for_alpha_bar
            f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
            i = np.arange(T, dtype=np.float64)
            betas = np.minimum(1 - f((i + 1) / T) / f(i / T), 0.999)
        return np.cumprod(1.0 - betas)


def timestep_value(t) -> int | float:
    """A timestep as the denoiser receives it and the report states it: DDIM's integers stay integers,
    flow matching's sigma * T keeps its fraction."""
    t = float(t)
    return int(t) if t.is_integer() else t


class _Sampler:
    steps: int
    timesteps: np.ndarray

    def step(self, x: np.ndarray, model_out: np.ndarray, i: int) -> np.ndarray:
        raise NotImplementedError

    def profiled_indices(self, k: int) -> np.ndarray:
        """K evenly spaced step indices out of the sampler's steps (uniform timestep sampling)."""
        if not 1 <= k <= self.steps:
            raise MPQError(f"--timesteps must be between 1 and --steps ({self.steps}), got {k}")
        return np.unique(np.round(np.linspace(0, self.steps - 1, k)).astype(int))

    def sample(self, x_T: np.ndarray, predict: Callable[[np.ndarray, int | float, int], np.ndarray],
               on_step: Callable[[int], None] | None = None) -> np.ndarray:
        """Run the full trajectory; `predict(x_t, t, i)` returns the model output at step i."""
        x = x_T
        for i, t in enumerate(self.timesteps):
            x = self.step(x, predict(x, timestep_value(t), i), i)
            if on_step:
                on_step(i + 1)
        return x


class FlowMatchEulerSampler(_Sampler):
    """Flow matching's Euler sampler as diffusers' FlowMatchEulerDiscreteScheduler: sigmas from
    sigma_max to sigma_min over `steps` shifted by `shift` (SD3), or FluxPipeline's 1 .. 1/steps shifted
    dynamically by the image's token count; timesteps = sigma * T, and x <- x + (sigma_next - sigma) * v,
    the last step to sigma 0."""

    def __init__(self, schedule: NoiseSchedule, steps: int = 28, image_seq_len: int | None = None):
        T = schedule.num_train_timesteps
        if not 1 <= steps <= T:
            raise MPQError(f"--steps must be between 1 and {T}, got {steps}")
        self.schedule, self.steps = schedule, steps
        shift = schedule.shift
        # the training sigmas (diffusers' __init__): 1 .. 1/T, statically shifted unless shifting is dynamic
        # (in float32, as diffusers holds them: its sigma_min and sigma_max are float32 values)
        train = np.linspace(1, T, T, dtype=np.float32)[::-1] / np.float32(T)
        if not schedule.use_dynamic_shifting:
            train = np.float32(shift) * train / (1 + (np.float32(shift) - 1) * train)
        sigma_max, sigma_min = float(train[0]), float(train[-1])
        sigmas = np.linspace(sigma_max * T, sigma_min * T, steps) / T  # set_timesteps, as diffusers does it
        if schedule.use_dynamic_shifting:
            # the pipelines that shift dynamically (FluxPipeline) pass their own sigmas, 1 .. 1/steps, to
            # set_timesteps instead of its sigma_max .. sigma_min spacing (diffusers, pipeline_flux.py)
            sigmas = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
            if image_seq_len is None:
                raise MPQError("this flow-matching schedule shifts by the image's token count (use_dynamic_shifting); "
                               "the sample shape is needed to sample it")
            m = (schedule.max_shift - schedule.base_shift) / (schedule.max_image_seq_len - schedule.base_image_seq_len)
            mu = image_seq_len * m + schedule.base_shift - m * schedule.base_image_seq_len
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
        else:
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        sigmas = sigmas.astype(np.float32).astype(np.float64)  # diffusers keeps them in float32
        self.timesteps = (sigmas * T).astype(np.float32).astype(np.float64)
        self.sigmas = np.append(sigmas, 0.0)

    def step(self, x: np.ndarray, model_out: np.ndarray, i: int) -> np.ndarray:
        dt = np.float32(self.sigmas[i + 1] - self.sigmas[i])
        return (x.astype(np.float32) + dt * model_out.astype(np.float32)).astype(np.float32)


def sampler_for(schedule: NoiseSchedule, steps: int, sample_shape: tuple[int, ...] | None = None,
                patch_size: int = 2) -> "_Sampler":
    """The sampler the schedule's scheduler runs: DDIM, or flow matching's Euler (whose dynamic shift
    needs the image's token count: (H / patch) * (W / patch) of the latent `sample_shape` (C, H, W))."""
    if not schedule.flow_matching:
        return DDIMSampler(schedule, steps)
    seq = None
    if sample_shape is not None:
        seq = (int(sample_shape[-2]) // patch_size) * (int(sample_shape[-1]) // patch_size)
    return FlowMatchEulerSampler(schedule, steps, seq)


class DDIMSampler(_Sampler):
    """DDIM with `steps` inference steps and 'leading' timestep spacing (diffusers' default)."""

    def __init__(self, schedule: NoiseSchedule, steps: int = 50):
        T = schedule.num_train_timesteps
        if not 1 <= steps <= T:
            raise MPQError(f"--steps must be between 1 and {T}, got {steps}")
        self.schedule, self.steps = schedule, steps
        self.ac = schedule.alphas_cumprod()
        ratio = T // steps
        self.timesteps = (np.arange(steps)[::-1] * ratio + schedule.steps_offset).astype(np.int64)
        self.timesteps = np.clip(self.timesteps, 0, T - 1)
        self.ratio = ratio

    def step(self, x: np.ndarray, model_out: np.ndarray, i: int) -> np.ndarray:
        t = int(self.timesteps[i])
        t_prev = t - self.ratio
        a_t = self.ac[t]
        a_prev = self.ac[t_prev] if t_prev >= 0 else 1.0
        x64, o64 = x.astype(np.float64), model_out.astype(np.float64)
        if self.schedule.prediction_type == "epsilon":
            x0 = (x64 - np.sqrt(1 - a_t) * o64) / np.sqrt(a_t)
            eps = o64
        else:  # v_prediction
            x0 = np.sqrt(a_t) * x64 - np.sqrt(1 - a_t) * o64
            eps = np.sqrt(a_t) * o64 + np.sqrt(1 - a_t) * x64
        if self.schedule.clip_sample:  # as diffusers' DDIMScheduler.step: x0 clipped, eps kept
            x0 = np.clip(x0, -1, 1)
        return (np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps).astype(np.float32)



def initial_noise(seed: int, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """x_T for samples seed, seed+1, ...: each sample has its own seed so subsets reproduce."""
    return np.stack([np.random.default_rng(seed + j).standard_normal(shape).astype(np.float32) for j in range(n)])


def guided(model_rows: Callable[[np.ndarray, int, int], np.ndarray], scale: float
           ) -> Callable[[np.ndarray, int, int], np.ndarray]:
    """The sampler's predict for a UNet run under classifier-free guidance.

    `model_rows(x_rows, t, i)` runs the UNet on the rows it really sees: with `scale` != 1 two per sample,
    (unconditional, conditional) adjacent, so any even prefix of a batch holds both branches (the
    conditioning is laid out the same way, ort.load_conditioning). The guided prediction is
    eps_u + scale * (eps_c - eps_u), as diffusers' pipelines compute it. With scale 1 the rows are the samples.
    """
    if scale == 1:
        return model_rows

    def predict(x: np.ndarray, t: int, i: int) -> np.ndarray:
        out = model_rows(np.repeat(x, 2, axis=0), t, i).reshape(x.shape[0], 2, *x.shape[1:]).astype(np.float64)
        u, c = out[:, 0], out[:, 1]
        return (u + scale * (c - u)).astype(np.float32)

    return predict


@dataclass(frozen=True)
class Trajectory:
    """The sampler run that calibration profiles and every later measurement follows: the schedule, its
    steps and which of them were profiled, the sample shape, the conditioning (a --calib-data file, the
    sequence length) and the classifier-free guidance scale. One object travels where these six did."""
    schedule: NoiseSchedule
    steps: int
    profiled: np.ndarray  # indices of the profiled steps among the sampler's
    shape: tuple[int, ...]  # one sample's shape (C, H, W)
    calib_data: str | None = None
    seq_len: int | None = None
    guidance: float = 1.0

    def sampler(self) -> "_Sampler":
        return sampler_for(self.schedule, self.steps, self.shape)
