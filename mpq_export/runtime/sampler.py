"""A deterministic DDIM sampler (eta = 0) in numpy, driving any noise-prediction function.

Calibration and validation both run the model inside this sampler so the inputs x_t are the
ones the model really sees. The schedule comes from a diffusers scheduler config when one is
given, else the standard linear beta schedule with T = 1000 (docs/design.md).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mpq_export.util.errors import MPQError


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class NoiseSchedule:
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # linear | scaled_linear | squaredcos_cap_v2
    prediction_type: str = "epsilon"  # epsilon | v_prediction
    clip_sample: bool = True  # diffusers DDIMScheduler default; latent-model configs set it false
    steps_offset: int = 0
    source: str = "default linear schedule (T=1000, clip_sample)"

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

    @classmethod
    def from_config(cls, path: str | None) -> "NoiseSchedule":
        if path is None:
            return cls()
        from mpq_export.util.files import read_json_object

        cfg = read_json_object(path, "a diffusers scheduler_config.json")
        kw = {k: cfg[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                  "prediction_type", "clip_sample", "steps_offset") if k in cfg}
        for k, kind in (("num_train_timesteps", int), ("steps_offset", int), ("beta_start", float), ("beta_end", float)):
            v = kw.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or (kind is int and float(v) != int(v))):
                raise MPQError(f"'{k}' in {path} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
            if v is not None and kind is int:
                kw[k] = int(v)
        return cls(**kw, source=os.path.abspath(path))

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


class DDIMSampler:
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

    def profiled_indices(self, k: int) -> np.ndarray:
        """K evenly spaced step indices out of the sampler's steps (uniform timestep sampling)."""
        if not 1 <= k <= self.steps:
            raise MPQError(f"--timesteps must be between 1 and --steps ({self.steps}), got {k}")
        return np.unique(np.round(np.linspace(0, self.steps - 1, k)).astype(int))

    def sample(self, x_T: np.ndarray, predict: Callable[[np.ndarray, int, int], np.ndarray],
               on_step: Callable[[int], None] | None = None) -> np.ndarray:
        """Run the full trajectory; `predict(x_t, t, i)` returns the model output at step i."""
        x = x_T
        for i, t in enumerate(self.timesteps):
            x = self.step(x, predict(x, int(t), i), i)
            if on_step:
                on_step(i + 1)
        return x


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
