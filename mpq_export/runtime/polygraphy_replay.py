"""Polygraphy replay of the validation: a data-loader script and the exact `polygraphy run` commands.

The quantized run uses onnxruntime's basic optimisation level: the Q/DQ pairs then run as the
float quantize-dequantize they specify (TensorRT's semantics), and onnxruntime 1.32's
MatMulAddFusion, which breaks INT8 Q/DQ before a MatMul + bias, stays out of the way.

The script serves the held-back validation inputs (validation_inputs.npz, saved by the pipeline)
one profiled timestep at a time. The comparison uses Polygraphy's statistic-based checks (SNR and
cosine similarity of the noise prediction), with thresholds a good quantization passes and a
broken one (wrong scale, wrong axis) does not.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the runtime sits below the stages
    from mpq_export.core.model_info import ModelInfo
from mpq_export.runtime.ort import fixed_batch

SNR_THRESHOLD_DB = 10.0
COSINE_THRESHOLD = 0.95
# Profiled steps with t below this fraction of T are left out of the replay: there the model must find
# noise of std sqrt(1 - alpha_bar_t) (0.006 at t = 0, cosine schedule) and its noise prediction is
# fragile under any quantization, yet that error reaches the sample multiplied by the same tiny factor.
# mpq-export's own validation still reports those steps (and the final samples they produce).
MIN_T_FRACTION = 0.05

_LOADER = '''"""Polygraphy data loader over mpq-export's held-back validation inputs (written by mpq-export)."""
import os

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE, TIMESTEP, TIMESTEP_RANK, TIMESTEP_DTYPE = {sample!r}, {timestep!r}, {t_rank}, {t_dtype!r}
CONDITIONING = {cond!r}
FIXED_BATCH = {fixed_batch!r}  # the model's batch size when it was exported with a fixed one
MIN_T = {min_t!r}  # steps with t below this are left out (see mpq_export.runtime.polygraphy_replay)


def load_data():
    with np.load(os.path.join(_HERE, "validation_inputs.npz")) as z:
        xs, ts = z[SAMPLE], z["timesteps"]
        cond = {{name: z[name] for name in CONDITIONING}}
    for x_all, t in zip(xs, ts):
        if t < MIN_T:
            continue
        step = FIXED_BATCH or len(x_all)
        for i in range(0, len(x_all) - step + 1, step):
            x = x_all[i: i + step]
            n = x.shape[0]
            feed = {{SAMPLE: x.astype(np.float32),
                     TIMESTEP: (np.full((n,), t) if TIMESTEP_RANK else np.array(t)).astype(TIMESTEP_DTYPE)}}
            feed.update({{name: c[i: i + n] for name, c in cond.items()}})
            yield feed
'''


@dataclass(frozen=True)
class PolygraphyReplay:
    """The commands that replay validation's per-step comparison with Polygraphy, and their thresholds."""
    commands: dict[str, str]  # what it compares -> shell command
    snr_threshold_db: float
    cosine_threshold: float
    min_t: int  # steps nearer t = 0 are left to the report's own table


def write_files(tmp_dir: str, final_dir: str, info: ModelInfo, fp32_model: str,
                num_train_timesteps: int = 1000, sample_shape: tuple[int, int, int] | None = None,
                batch: int | None = None, with_tensorrt: bool = True) -> PolygraphyReplay:
    """Write polygraphy_data.py into tmp_dir; return the commands (with final_dir paths) for the report.
    `sample_shape` (C, H, W) and `batch` (the loader's rows per feed) give the GPU command its profile;
    `with_tensorrt`: the graph is one TensorRT builds (the tensorrt target's), so the GPU command is printed
    too (an onnxruntime-target graph, with INT4 convolutions and UINT8 Q/DQ, is not)."""
    with open(os.path.join(tmp_dir, "polygraphy_data.py"), "w") as f:
        f.write(_LOADER.format(sample=info.sample.name, timestep=info.timestep.name, t_rank=len(info.timestep.shape),
                               t_dtype=info.timestep.dtype, cond=[c.name for c in info.conditioning],
                               fixed_batch=fixed_batch(info), min_t=int(MIN_T_FRACTION * num_train_timesteps)))
    profile = None
    if sample_shape is not None and batch:
        from mpq_export.runtime.engine import EngineSettings, profile_shapes

        e = EngineSettings()
        loader_batch = fixed_batch(info) or batch
        profile = profile_shapes(info, sample_shape, (e.min_batch, e.opt_batch, max(e.max_batch, loader_batch)))
    return PolygraphyReplay(commands(final_dir, fp32_model, profile, with_tensorrt), SNR_THRESHOLD_DB, COSINE_THRESHOLD,
                            int(MIN_T_FRACTION * num_train_timesteps))


def _shape_flags(profile: dict[str, list[tuple[int, ...]]]) -> str:
    """--trt-{min,opt,max}-shapes in Polygraphy's `name:[d0,d1,...]` form."""
    flags = []
    for i, which in enumerate(("min", "opt", "max")):
        flags.append(f"--trt-{which}-shapes " + " ".join(
            shlex.quote(f"{name}:[{','.join(map(str, shapes[i]))}]") for name, shapes in profile.items()))
    return " ".join(flags)


def commands(out_dir: str, fp32_model: str, profile: dict[str, list[tuple[int, ...]]] | None = None,
             with_tensorrt: bool = True) -> dict[str, str]:
    """The replay commands. The GPU one builds the engine as runtime/engine.py does (strongly typed, so
    the Q/DQ and FP16 types decide each layer's precision; builder optimization level 3; the same
    min/opt/max shapes when `profile` is given) and compares it with onnxruntime at the basic
    optimisation level the CPU command uses."""
    d = os.path.abspath(out_dir)
    loader = shlex.quote(os.path.join(d, "polygraphy_data.py"))
    ref = shlex.quote(os.path.join(d, "fp32_outputs.json"))
    q = shlex.quote(os.path.join(d, "model.mpq.onnx"))
    check = (f"--compare snr cosine_similarity --snr-threshold {SNR_THRESHOLD_DB:g} "
             f"--cosine-similarity-threshold {COSINE_THRESHOLD:g}")
    out = {
        "CPU: FP32 ONNX vs quantized ONNX (onnxruntime)":
            f"polygraphy run {shlex.quote(os.path.abspath(fp32_model))} --onnxrt --data-loader-script {loader} "
            f"--save-outputs {ref} && polygraphy run {q} --onnxrt --graph-optimization-level ORT_ENABLE_BASIC "
            f"--data-loader-script {loader} --load-outputs {ref} {check}",
    }
    if with_tensorrt:
        out["GPU: TensorRT engine of the quantized ONNX vs onnxruntime (needs TensorRT)"] = (
            f"polygraphy run {q} --trt --strongly-typed --builder-optimization-level 3 "
            + (f"{_shape_flags(profile)} " if profile else "")
            + f"--onnxrt --graph-optimization-level ORT_ENABLE_BASIC --data-loader-script {loader} {check}")
    return out

