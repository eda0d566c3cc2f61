"""onnxruntime sessions, model feeds and conditioning inputs shared by calibrate, validate and the probes."""

from __future__ import annotations

import os

import numpy as np

from mpq_export.errors import MPQError, require_int
from mpq_export.inspect import InputSpec, ModelInfo


DEVICES = ("cpu", "cuda")
THREADS_PER_CORE = 4  # the most --threads per available core


def check_threads(threads) -> None:
    """--threads: 0 (onnxruntime's choice, one per core) up to THREADS_PER_CORE per core this process may
    use. Each onnxruntime thread is an OS thread with its own stack and scratch: --threads 100000 held
    16 GB of memory before the first forward here, so a count past any use is refused up front."""
    require_int(threads, "--threads", 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads > THREADS_PER_CORE * cores:
        raise MPQError(f"--threads {threads} is more than {THREADS_PER_CORE} per core on this machine ({cores} "
                       f"core{'s' if cores != 1 else ''}): give at most {THREADS_PER_CORE * cores}, or 0 for one per core")


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


UNCOND_PREFIX = "uncond_"  # --calib-data arrays of the unconditional branch: uncond_encoder_hidden_states, ...
DESCRIPTION_KEY = "mpq_export_source"  # optional: a sentence saying what the file holds, for the report


def load_conditioning(info: ModelInfo, path: str | None, n: int, seed: int, seq_len: int | None = None,
                      guidance_scale: float = 1.0) -> tuple[dict[str, np.ndarray], str]:
    """Conditioning inputs for n samples and a sentence saying where they came from.

    From `path` (an .npz whose keys are input names) when given: sample j takes row (seed + j) mod rows,
    so calibration (seed 0) and validation (its own seeds) see different rows of a long file. Else
    standard-normal floats (zeros for integer inputs such as class labels) of the input's shape,
    which the report states, since such conditioning is not what the model sees in use.

    With `guidance_scale` != 1 (classifier-free guidance) the result has 2n rows, the unconditional
    and the conditional row of each sample adjacent (sampler.guided); the unconditional rows come
    from the file's `uncond_<input>` arrays (one row is broadcast to every sample).
    """
    if not info.conditioning:
        if path is not None:
            raise MPQError(f"--calib-data {path} is given but the model has no conditioning inputs (only "
                           f"'{info.sample.name}' and '{info.timestep.name}'); drop --calib-data")
        if guidance_scale != 1:
            raise MPQError(f"--guidance-scale {guidance_scale:g} needs a conditional model; this one has no "
                           f"conditioning inputs: drop --guidance-scale")
        if seq_len is not None:
            raise MPQError(f"--seq-len {seq_len} is given but the model has no conditioning inputs (only "
                           f"'{info.sample.name}' and '{info.timestep.name}'); drop --seq-len")
        return {}, "none (unconditional model)"
    if guidance_scale != 1 and path is None:
        raise MPQError(f"--guidance-scale {guidance_scale:g} needs the unconditional (empty-prompt) embeddings: run on a "
                       f"diffusers pipeline folder (prompts are encoded with its text encoder) or give --calib-data "
                       f"FILE.npz with {UNCOND_PREFIX}{info.conditioning[0].name}")
    if path is None:
        return _standard_normal_conditioning(info, n, seed, seq_len)
    data = _open_calib_data(info, path)
    rows = (seed + np.arange(n))  # row j of the file for sample j, modulo the file's length
    out = {}
    for spec in info.conditioning:
        arr = _calib_array(data, spec, path)
        out[spec.name] = arr[rows % len(arr)]
    source = str(data[DESCRIPTION_KEY]) if DESCRIPTION_KEY in data.files else f"file {os.path.abspath(path)}"
    if guidance_scale == 1:
        return out, source
    for spec in info.conditioning:
        u = _uncond_array(data, spec, out[spec.name], path)
        pairs = np.stack([u[rows % len(u)], out[spec.name]], axis=1)  # [n, 2, ...]: (uncond, cond) adjacent
        out[spec.name] = pairs.reshape(2 * n, *pairs.shape[2:])
    return out, source + (f"; classifier-free guidance {guidance_scale:g} (each sample's unconditional and "
                          f"conditional rows batched, as the pipeline runs the UNet)")


def _standard_normal_conditioning(info: ModelInfo, n: int, seed: int,
                                  seq_len: int | None) -> tuple[dict[str, np.ndarray], str]:
    rng = np.random.default_rng(seed + 7919)
    out = {}
    for spec in info.conditioning:
        shape = spec.concrete(n, fallback={1: seq_len or info.seq_len})
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    names = ", ".join(s.name for s in info.conditioning)
    return out, f"standard-normal {names} (none supplied: give --calib-data FILE.npz for real conditioning)"


def _open_calib_data(info: ModelInfo, path: str):
    if not os.path.exists(path):
        raise MPQError(f"--calib-data file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise MPQError(f"--calib-data {path} is not a readable .npz ({type(e).__name__}); save it with numpy.savez") from None
    if not hasattr(data, "files"):
        raise MPQError(f"--calib-data {path} is a single array (.npy); save the inputs by name with "
                       f"numpy.savez(FILE.npz, {info.conditioning[0].name}=...)")
    return data


def _calib_array(data, spec, path: str) -> np.ndarray:
    """The file's array for input `spec`, checked against the model's input and cast to its dtype."""
    if spec.name not in data.files:
        raise MPQError(f"--calib-data {path} has no array '{spec.name}' (has: {', '.join(data.files)}); add it")
    raw = np.asarray(data[spec.name])
    if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_):
        raise MPQError(f"'{spec.name}' in {path} holds {raw.dtype} values; it must be numeric ({spec.dtype})")
    if raw.ndim != len(spec.shape):
        raise MPQError(f"'{spec.name}' in {path} has rank {raw.ndim}, the model wants {len(spec.shape)} ({spec.shape})")
    if raw.shape[0] == 0:
        raise MPQError(f"'{spec.name}' in {path} has no rows; give at least one")
    for axis, d in enumerate(spec.shape[1:], 1):
        if isinstance(d, int) and d > 0 and raw.shape[axis] != d:
            raise MPQError(f"'{spec.name}' in {path} has shape {list(raw.shape)}; the model wants "
                           f"{[str(x) for x in spec.shape]} (dimension {axis} must be {d})")
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise MPQError(f"'{spec.name}' in {path} contains NaN/Inf; give finite values")
    return raw.astype(np.dtype(spec.dtype))


def _uncond_array(data, spec, cond: np.ndarray, path: str) -> np.ndarray:
    """The unconditional (empty-prompt) rows for input `spec`: one row, or one per sample."""
    key = UNCOND_PREFIX + spec.name
    if key not in data.files:
        raise MPQError(f"--calib-data {path} has no '{key}' for classifier-free guidance (has: "
                       f"{', '.join(data.files)}); add the empty prompt's {spec.name} as '{key}', "
                       f"or give --guidance-scale 1")
    u = np.asarray(data[key])
    if u.ndim != cond.ndim or u.shape[1:] != cond.shape[1:] or not len(u):
        raise MPQError(f"'{key}' in {path} has shape {list(u.shape)}; it must match '{spec.name}' "
                       f"{list(cond.shape[1:])} after the first axis (one row or one per sample)")
    return u.astype(np.dtype(spec.dtype))


def check_finite(arr: np.ndarray, what: str) -> None:
    if not np.isfinite(arr).all():
        raise MPQError(f"the model produced NaN/Inf in {what}; check the FP32 model (and its inputs) runs cleanly in onnxruntime")
