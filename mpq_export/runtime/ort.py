"""onnxruntime sessions and model feeds shared by calibrate, validate and the probes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mpq_export.util.errors import MPQError, require_int
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the runtime sits below the stages
    from mpq_export.core.model_info import InputSpec, ModelInfo


DEVICES = ("cpu", "cuda")
THREADS_PER_CORE = 4  # the most --threads per available core


def check_threads(threads) -> None:
    """--threads: 0 (onnxruntime's choice, one per core) up to THREADS_PER_CORE per core this process may
    use. Each onnxruntime thread is an OS thread with its own stack and scratch: an absurd count holds
    gigabytes before the first forward, so a count past any use is refused up front."""
    require_int(threads, "--threads", 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads > THREADS_PER_CORE * cores:
        raise MPQError(f"--threads {threads} is more than {THREADS_PER_CORE} per core on this machine ({cores} "
                       f"core{'s' if cores != 1 else ''}): give at most {THREADS_PER_CORE * cores}, or 0 for one per core")


@dataclass(frozen=True)
class RuntimeSettings:
    """How onnxruntime runs on this machine (calibration, validation, probes): nothing a result depends on,
    so no cache key holds it."""
    threads: int = 0  # intra-op threads; 0: one per core
    device: str = "cpu"  # cpu | cuda (onnxruntime's CUDA provider, from onnxruntime-gpu)

    def __post_init__(self):
        check_threads(self.threads)
        if self.device not in DEVICES:
            raise MPQError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")


def providers_for(device: str) -> list[str]:
    """onnxruntime execution providers for --device, or a one-line error saying what is missing."""
    if device not in DEVICES:
        raise MPQError(f"--device must be one of {', '.join(DEVICES)}, got '{device}'")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise MPQError(f"--device cuda needs onnxruntime-gpu and an NVIDIA GPU, and this onnxruntime offers only "
                       f"{', '.join(available)}: pip uninstall -y onnxruntime && pip install onnxruntime-gpu "
                       f"(same version), or run with --device cpu")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def ort_session(model: str | bytes, threads: int = 0, external_data_dir: str | None = None,
                low_memory: bool = False, device: str = "cpu"):
    """An onnxruntime session on `device` (providers_for).

    `qdq_matmulnbits_accuracy_level = 0` keeps INT4 DQ+MatMul at float activations: by default
    onnxruntime fuses it into MatMulNBits with 8-bit activations, which is not the numerics a
    TensorRT weight-only INT4 GEMM has (measured with onnxruntime 1.32), so reference figures would be off.
    """
    import onnxruntime as ort

    check_threads(threads)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if low_memory:
        # the default arena keeps the peak of the largest call for the whole run (measured with onnxruntime 1.32)
        so.enable_cpu_mem_arena = False
    if external_data_dir is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", external_data_dir)
    try:
        # MatMulAddFusion rewrites MatMul+bias into Reshape/Gemm and breaks INT8 Q/DQ on the MatMul's
        # input ("output_dtype INT8 does not match y_zero_point type UINT8", onnxruntime 1.32, seen on
        # torch dynamo exports); it only reshapes, so leaving it out changes no numbers
        return ort.InferenceSession(model, sess_options=so, providers=providers_for(device),
                                    disabled_optimizers=["MatMulAddFusion"])
    except Exception as e:
        where = model if isinstance(model, str) else "the model"
        raise MPQError(f"onnxruntime cannot load {where}: {str(e).splitlines()[0][:300]}") from None


def timestep_feed(spec: InputSpec, t: int, batch: int) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    if len(spec.shape) == 0:
        return np.array(t, dtype=dtype)
    return np.full((batch,), t, dtype=dtype)


def build_feeds(info: ModelInfo, x: np.ndarray, t: int, cond: dict[str, np.ndarray], offset: int = 0) -> dict[str, np.ndarray]:
    """Model inputs for the samples x (rows offset .. offset + len(x) of the conditioning)."""
    feeds = {info.sample.name: x.astype(np.dtype(info.sample.dtype), copy=False),
             info.timestep.name: timestep_feed(info.timestep, t, x.shape[0])}
    for spec in info.conditioning:
        feeds[spec.name] = cond[spec.name][offset: offset + x.shape[0]]
    return feeds


def fixed_batch(info: ModelInfo) -> int | None:
    """The batch size the model was exported with, when it is not dynamic."""
    d = info.sample.shape[0] if info.sample.shape else None
    return d if isinstance(d, int) and d > 0 else None


def _run(sess, names, feeds, info: ModelInfo):
    try:
        return sess.run(names, feeds)
    except Exception as e:  # onnxruntime raises its own exception types with multi-line texts
        if isinstance(e, (MemoryError, KeyboardInterrupt)):
            raise
        text = " ".join(str(e).split())
        shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in feeds.items() if k in
                           (info.sample.name, info.timestep.name, *(c.name for c in info.conditioning)))
        raise MPQError(f"onnxruntime cannot run the model on inputs {shapes}: {text[:240]}; check --resolution "
                       f"(UNets need multiples of 8), --seq-len, --sample-name / --timestep-name and --calib-data") from None


def run_model(sess, info: ModelInfo, names: list[str], x: np.ndarray, t: int, cond: dict[str, np.ndarray],
              extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """sess.run for any number of samples: models exported with a fixed batch run in chunks of it
    (the last chunk padded by repeating its last sample, then trimmed)."""
    b = fixed_batch(info)
    n = x.shape[0]
    if b is None or b == n:
        feeds = build_feeds(info, x, t, cond)
        feeds.update(extra or {})
        return _run(sess, names, feeds, info)
    chunks = []
    for i in range(0, n, b):
        xi = x[i: i + b]
        pad = b - len(xi)
        ci = {k: v[i: i + b] for k, v in cond.items()}
        if pad:
            xi = np.concatenate([xi, np.repeat(xi[-1:], pad, axis=0)])
            ci = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in ci.items()}
        feeds = build_feeds(info, xi, t, ci)
        feeds.update(extra or {})
        chunks.append(_run(sess, names, feeds, info))
    return [np.concatenate([c[k] for c in chunks])[:n] for k in range(len(names))]




def check_finite(arr: np.ndarray, what: str) -> None:
    if not np.isfinite(arr).all():
        raise MPQError(f"the model produced NaN/Inf in {what}; check the FP32 model (and its inputs) runs cleanly in onnxruntime")
