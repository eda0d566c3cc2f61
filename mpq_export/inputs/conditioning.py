"""Conditioning inputs for calibration and validation: a user's .npz (arrays named like the model's
inputs, with guidance also uncond_<name>), or seeded standard-normal stand-ins when none is given."""

from __future__ import annotations

import os

import numpy as np

from typing import TYPE_CHECKING

from mpq_export.util.errors import MPQError

if TYPE_CHECKING:
    from mpq_export.core.model_info import ModelInfo

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
    if guidance_scale != 1 and any(c.name == "guidance" for c in info.conditioning):
        raise MPQError(f"--guidance-scale {guidance_scale:g}: this model takes its guidance as an input ('guidance', "
                       f"Flux's distilled guidance), not as classifier-free guidance over two rows; drop "
                       f"--guidance-scale (--calib-data may give the guidance input's values)")
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
    source = str(_array(data, DESCRIPTION_KEY, path)) if DESCRIPTION_KEY in data.files else f"file {os.path.abspath(path)}"
    if guidance_scale == 1:
        return out, source
    for spec in info.conditioning:
        u = _uncond_array(data, spec, out[spec.name], path)
        pairs = np.stack([u[rows % len(u)], out[spec.name]], axis=1)  # [n, 2, ...]: (uncond, cond) adjacent
        out[spec.name] = pairs.reshape(2 * n, *pairs.shape[2:])
    return out, source + (f"; classifier-free guidance {guidance_scale:g} (each sample's unconditional and "
                          f"conditional rows batched, as the pipeline runs the UNet)")


# conditioning inputs that are settings: Flux-dev's distilled guidance (FluxPipeline's guidance_scale 3.5);
# PixArt's text attention mask (every token kept)
DEFAULT_VALUES = {"guidance": 3.5, "encoder_attention_mask": 1.0}


def _standard_normal_conditioning(info: ModelInfo, n: int, seed: int,
                                  seq_len: int | None) -> tuple[dict[str, np.ndarray], str]:
    rng = np.random.default_rng(seed + 7919)
    out = {}
    for spec in info.conditioning:
        shape = spec.concrete(n, fallback={1: seq_len or info.seq_len})
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
        elif spec.name in DEFAULT_VALUES:  # a setting, not an embedding: the pipeline's default value
            out[spec.name] = np.full(shape, DEFAULT_VALUES[spec.name], dtype=spec.dtype)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    names = ", ".join(s.name for s in info.conditioning if s.name not in DEFAULT_VALUES)
    fixed = "".join(f"; {s.name} {DEFAULT_VALUES[s.name]:g} (the pipeline's default)" for s in info.conditioning
                    if s.name in DEFAULT_VALUES)
    return out, f"standard-normal {names}{fixed} (none supplied: give --calib-data FILE.npz for real conditioning)"


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


def _array(data, name: str, path: str) -> np.ndarray:
    """One array of the .npz; object arrays (rows of different lengths, Python objects) are refused: they
    load only with pickle, which runs code from the file."""
    try:
        return np.asarray(data[name])
    except ValueError:
        raise MPQError(f"'{name}' in {path} is an object array (rows of different lengths?); save it as one numeric "
                       f"array with equal rows (pad or truncate them)") from None
    except Exception as e:  # a truncated member: zipfile / zlib errors
        raise MPQError(f"'{name}' in {path} cannot be read ({type(e).__name__}); write the file again") from None


def _source(data, path: str) -> str:
    """How messages name the file: the user's --calib-data, or the prompts mpq-export encoded itself."""
    if "mpq_export_encoder" in data.files:  # sd_pipeline.ENCODER_KEY: our own encoded prompts
        return f"the pipeline's prompts as mpq-export encoded them ({path})"
    return f"--calib-data {path}"


def _values(raw: np.ndarray, key: str, path: str, dtype: str) -> np.ndarray:
    """An array's values checked as conditioning: real numbers (or booleans), all finite."""
    if np.issubdtype(raw.dtype, np.complexfloating):
        raise MPQError(f"'{key}' in {path} holds complex values; conditioning is real ({dtype}): save the real part "
                       f"(numpy.real) if that is what the model should see")
    if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_):
        raise MPQError(f"'{key}' in {path} holds {raw.dtype} values; it must be numeric ({dtype})")
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise MPQError(f"'{key}' in {path} contains NaN/Inf; give finite values")
    return raw


def _calib_array(data, spec, path: str) -> np.ndarray:
    """The file's array for input `spec`, checked against the model's input and cast to its dtype."""
    if spec.name not in data.files:
        raise MPQError(f"--calib-data {path} has no array '{spec.name}' (has: {', '.join(data.files)}); add it")
    raw = _values(_array(data, spec.name, path), spec.name, path, spec.dtype)
    if raw.ndim != len(spec.shape):
        raise MPQError(f"'{spec.name}' in {path} has rank {raw.ndim}, the model wants {len(spec.shape)} ({spec.shape})")
    if raw.shape[0] == 0:
        raise MPQError(f"'{spec.name}' in {path} has no rows; give at least one")
    for axis, d in enumerate(spec.shape[1:], 1):
        if isinstance(d, int) and d > 0 and raw.shape[axis] != d:
            raise MPQError(f"'{spec.name}' in {path} has shape {list(raw.shape)}; the model wants "
                           f"{[str(x) for x in spec.shape]} (dimension {axis} must be {d})")
    return raw.astype(np.dtype(spec.dtype))


def _uncond_array(data, spec, cond: np.ndarray, path: str) -> np.ndarray:
    """The unconditional (empty-prompt) rows for input `spec`: one row, or one per sample."""
    key = UNCOND_PREFIX + spec.name
    if key not in data.files:
        if "mpq_export_encoder" in data.files:
            raise MPQError(f"{_source(data, path)} have no unconditional branch for classifier-free guidance (this "
                           f"pipeline does not run one); drop --guidance-scale")
        raise MPQError(f"--calib-data {path} has no '{key}' for classifier-free guidance (has: "
                       f"{', '.join(data.files)}); add the empty prompt's {spec.name} as '{key}', "
                       f"or give --guidance-scale 1")
    u = _values(_array(data, key, path), key, path, spec.dtype)
    if u.ndim != cond.ndim or u.shape[1:] != cond.shape[1:] or not len(u):
        raise MPQError(f"'{key}' in {path} has shape {list(u.shape)}; it must match '{spec.name}' "
                       f"{list(cond.shape[1:])} after the first axis (one row or one per sample)")
    return u.astype(np.dtype(spec.dtype))
