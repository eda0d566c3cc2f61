"""onnxruntime sessions and model feeds shared by calibrate and validate."""

from __future__ import annotations

import os

import numpy as np

from mpq_export.errors import MPQError
from mpq_export.layers import InputSpec, ModelInfo


def ort_session(model: str | bytes, threads: int = 0, external_data_dir: str | None = None,
                low_memory: bool = False):
    """An onnxruntime CPU session.

    `qdq_matmulnbits_accuracy_level = 0` keeps INT4 DQ+MatMul at float activations: by default
    onnxruntime fuses it into MatMulNBits with 8-bit activations, which is not the numerics a
    TensorRT weight-only INT4 GEMM has (FACTS.md), so reference figures would be off.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if low_memory:
        # the default arena keeps the peak of the largest call for the whole run (FACTS.md)
        so.enable_cpu_mem_arena = False
    if external_data_dir is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", external_data_dir)
    try:
        # MatMulAddFusion rewrites MatMul+bias into Reshape/Gemm and breaks INT8 Q/DQ on the MatMul's
        # input ("output_dtype INT8 does not match y_zero_point type UINT8", onnxruntime 1.32, seen on
        # torch dynamo exports); it only reshapes, so leaving it out changes no numbers
        return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"],
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


def run_model(sess, info: ModelInfo, names: list[str], x: np.ndarray, t: int, cond: dict[str, np.ndarray],
              extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """sess.run for any number of samples: models exported with a fixed batch run in chunks of it
    (the last chunk padded by repeating its last sample, then trimmed)."""
    b = fixed_batch(info)
    n = x.shape[0]
    if b is None or b == n:
        feeds = build_feeds(info, x, t, cond)
        feeds.update(extra or {})
        return sess.run(names, feeds)
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
        chunks.append(sess.run(names, feeds))
    return [np.concatenate([c[k] for c in chunks])[:n] for k in range(len(names))]


def load_conditioning(info: ModelInfo, path: str | None, n: int, seed: int,
                      seq_len: int | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Conditioning inputs for n samples and a sentence saying where they came from.

    From `path` (an .npz whose keys are input names; rows are cycled to n) when given; else
    standard-normal floats (zeros for integer inputs such as class labels) of the input's shape,
    which the report states, since such conditioning is not what the model sees in use.
    """
    if not info.conditioning:
        return {}, "none (unconditional model)"
    out: dict[str, np.ndarray] = {}
    if path is not None:
        if not os.path.exists(path):
            raise MPQError(f"--calib-data file not found: {path}")
        try:
            data = np.load(path)
        except Exception as e:
            raise MPQError(f"--calib-data {path} is not a readable .npz ({type(e).__name__}); save it with numpy.savez") from None
        for spec in info.conditioning:
            if spec.name not in data:
                raise MPQError(f"--calib-data {path} has no array '{spec.name}' (has: {', '.join(data.files)}); add it")
            arr = np.asarray(data[spec.name]).astype(np.dtype(spec.dtype))
            if len(arr.shape) != len(spec.shape):
                raise MPQError(f"'{spec.name}' in {path} has rank {arr.ndim}, the model wants {len(spec.shape)} ({spec.shape})")
            reps = int(np.ceil(n / arr.shape[0]))
            out[spec.name] = np.concatenate([arr] * reps)[:n]
        return out, f"file {os.path.abspath(path)}"
    rng = np.random.default_rng(seed + 7919)
    seq_default = int(info.metadata.get("mpq_export.seq_len", 77))
    for spec in info.conditioning:
        shape = spec.concrete(n, fallback={1: seq_len or seq_default})
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    names = ", ".join(s.name for s in info.conditioning)
    return out, f"standard-normal {names} (none supplied: give --calib-data FILE.npz for real conditioning)"


def check_finite(arr: np.ndarray, what: str) -> None:
    if not np.isfinite(arr).all():
        raise MPQError(f"the model produced NaN/Inf in {what}; check the FP32 model (and its inputs) runs cleanly in onnxruntime")
