"""validate stage: the quantized model against the FP32 one under onnxruntime, on held-back seeds.

Two measurements, both from the same sampler, schedule and profiled steps as calibration:
- per timestep: both models see the FP32 trajectory's x_t; SQNR / cosine / max error of the
  noise prediction (the quantity the model is trained to produce);
- end to end: the full sampler runs once with each model from the same x_T; PSNR of the final
  samples (what a user looks at), peak = the FP32 samples' range.
The inputs of the per-timestep comparison are saved (validation_inputs.npz) so Polygraphy can
replay exactly the same comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mpq_export.core.model_info import ModelInfo
from mpq_export.util.metrics import cosine, psnr_db, sqnr_db
from mpq_export.util.progress import Progress
from mpq_export.runtime.ort import RuntimeSettings, check_finite, ort_session, run_model
from mpq_export.inputs.conditioning import load_conditioning
from mpq_export.runtime.sampler import Trajectory, guided, initial_noise, timestep_value


@dataclass(frozen=True)
class ValidationSettings:
    samples: int = 8
    seed: int = 10_000  # held-back seeds: calibration uses seed .. seed + N - 1 with its own base

    def __post_init__(self):
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples <= 0:
            from mpq_export.util.errors import MPQError

            raise MPQError(f"--val-samples must be a positive integer, got {self.samples!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            from mpq_export.util.errors import MPQError

            raise MPQError(f"--val-seed must be an integer >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class TimestepError:
    """The quantized model's noise prediction against FP32's at one profiled step, on FP32's x_t."""
    t: int | float  # the scheduler's own units (sampler.timestep_value)
    sqnr_db: float
    cosine: float
    max_abs_err: float


@dataclass(frozen=True)
class ValidationSummary:
    """What the report keeps of a validation (no arrays)."""
    per_timestep: list[TimestepError]
    mean_sqnr_db: float
    mean_cosine: float
    sample_psnr_db: float
    sample_psnr_per_sample: list[float]
    seconds: float


@dataclass
class ValidationResult:
    per_timestep: list[TimestepError]
    mean_sqnr_db: float  # mean over t of per-step SQNR (pooled SQNR is dominated by t ~ 0)
    mean_cosine: float
    sample_psnr_db: float  # mean over samples
    sample_psnr_per_sample: list[float]
    samples_fp32: np.ndarray = field(repr=False, default=None)
    samples_quant: np.ndarray = field(repr=False, default=None)
    inputs: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # per-step feeds, stacked
    seconds: float = 0.0

    def summary(self) -> ValidationSummary:
        return ValidationSummary(per_timestep=list(self.per_timestep), mean_sqnr_db=self.mean_sqnr_db,
                                 mean_cosine=self.mean_cosine, sample_psnr_db=self.sample_psnr_db,
                                 sample_psnr_per_sample=list(self.sample_psnr_per_sample), seconds=self.seconds)


@dataclass
class FP32Reference:
    """The FP32 model's trajectory on the held-back seeds: computed once, compared with many models."""
    xs: np.ndarray  # [K, n, ...] x_t at the profiled steps
    timesteps: np.ndarray  # [K]
    eps: np.ndarray  # [K, n, ...] FP32 output at those x_t
    final: np.ndarray  # [n, ...] final samples
    x_T: np.ndarray
    cond: dict[str, np.ndarray]  # rows as the UNet sees them (two per sample under guidance)
    guidance_scale: float = 1.0


def fp32_reference(info: ModelInfo, trajectory: Trajectory, settings: ValidationSettings,
                   runtime: RuntimeSettings = RuntimeSettings()) -> FP32Reference:
    """The FP32 model along `trajectory` from the held-back seeds of `settings`."""
    # no arena, here and in validate: with it, runs at two batch sizes (per-step rows, guided sampler
    # rows) keep the peak of both, nearly doubling it on SD-size models at no gain in speed
    fp = ort_session(info.path, runtime.threads, low_memory=True, device=runtime.device)
    cond, _ = load_conditioning(info, trajectory.calib_data, settings.samples, settings.seed, trajectory.seq_len,
                                trajectory.guidance)
    profiled_set = {int(i) for i in trajectory.profiled}
    xs, ts, eps_k = [], [], []

    def model_rows(x, t, i):
        (eps,) = run_model(fp, info, [info.output], x, t, cond)
        check_finite(eps, f"the FP32 output at t={t}")
        if i in profiled_set:
            xs.append(x.copy())
            ts.append(t)
            eps_k.append(eps)
        return eps

    x_T = initial_noise(settings.seed, settings.samples, trajectory.shape)
    with Progress("validate: FP32 reference", trajectory.steps) as p:
        final = trajectory.sampler().sample(x_T, guided(model_rows, trajectory.guidance),
                                            on_step=lambda d: p.update(d, "steps"))
    return FP32Reference(xs=np.stack(xs), timesteps=np.asarray(ts, dtype=np.int64 if all(isinstance(t, int) for t in ts) else np.float64), eps=np.stack(eps_k), final=final,
                         x_T=x_T, cond=cond, guidance_scale=trajectory.guidance)


def validate(info: ModelInfo, quantized_path: str, trajectory: Trajectory, settings: ValidationSettings,
             reference: FP32Reference | None = None, label: str = "validate",
             runtime: RuntimeSettings = RuntimeSettings()) -> ValidationResult:
    """Compare `quantized_path` with the FP32 model along `trajectory`; pass `reference` to reuse one FP32 run.
    `label` names the run in progress messages."""
    t0 = time.perf_counter()
    ref = reference or fp32_reference(info, trajectory, settings, runtime)
    q = ort_session(quantized_path, runtime.threads, low_memory=True, device=runtime.device)
    n = len(ref.final)

    def run(x, t):
        (out,) = run_model(q, info, [info.output], x, t, ref.cond)
        return out

    per_t = []
    for x, t, eps in zip(ref.xs, ref.timesteps, ref.eps):
        eq = run(x, timestep_value(t))
        per_t.append(TimestepError(t=timestep_value(t), sqnr_db=sqnr_db(eps, eq), cosine=cosine(eps, eq),
                                   max_abs_err=float(np.abs(eps - eq).max())))
    with Progress(label, trajectory.steps) as p:
        final_q = trajectory.sampler().sample(ref.x_T, guided(lambda x, t, i: run(x, t), ref.guidance_scale),
                                              on_step=lambda d: p.update(d, "quantized steps"))
    final_fp = ref.final
    peak = float(final_fp.max() - final_fp.min()) or 1.0
    per_sample = [psnr_db(final_fp[j], final_q[j], peak) for j in range(n)]
    inputs = {info.sample.name: ref.xs, "timesteps": ref.timesteps}
    inputs.update({k: v for k, v in ref.cond.items()})
    return ValidationResult(
        per_timestep=per_t, mean_sqnr_db=float(np.mean([r.sqnr_db for r in per_t])),
        mean_cosine=float(np.mean([r.cosine for r in per_t])), sample_psnr_db=float(np.mean(per_sample)),
        sample_psnr_per_sample=per_sample, samples_fp32=final_fp, samples_quant=final_q, inputs=inputs,
        seconds=time.perf_counter() - t0)


@dataclass
class Validator:
    """One model's validation set-up, made once per run: every written graph is compared with the same FP32
    reference along the same trajectory."""
    info: ModelInfo
    trajectory: Trajectory
    settings: ValidationSettings
    reference: FP32Reference
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    @classmethod
    def of(cls, info: ModelInfo, trajectory: Trajectory, settings: ValidationSettings,
           runtime: RuntimeSettings = RuntimeSettings()) -> "Validator":
        return cls(info, trajectory, settings, fp32_reference(info, trajectory, settings, runtime), runtime)

    def validate(self, path: str, label: str = "validate") -> ValidationResult:
        return validate(self.info, path, self.trajectory, self.settings, self.reference, label, self.runtime)
