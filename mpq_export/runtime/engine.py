"""build stage: a TensorRT engine from the FP16 + Q/DQ ONNX (GPU machines with TensorRT only).

Written to TensorRT's documented Python API (10.x and 11.x): a strongly typed network (precision
comes from the graph; TensorRT 11 has no FP16/INT8 builder flags and ignores the flag), the
ONNX parser reading from file (so external weight data resolves), one optimization profile over
batch and resolution, a workspace limit, a reusable timing cache and the builder optimization
level. The engine inspector's per-layer JSON gives the precisions TensorRT really chose.
tensorrt is imported lazily; without it (or without a GPU) the pipeline says so in one line.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field

from mpq_export.util.errors import MPQError
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the runtime sits below the stages
    from mpq_export.core.model_info import ModelInfo


@dataclass(frozen=True)
class EngineSettings:
    workspace_mb: int = 4096
    optimization_level: int = 3  # TensorRT's default; 5 searches longest
    min_batch: int = 1
    opt_batch: int = 2
    max_batch: int = 8
    timing_cache: str | None = None  # reused across builds when given (saved back after the build)


@dataclass
class EngineResult:
    path: str
    seconds: float
    layer_precisions: dict[str, int] = field(default_factory=dict)  # precision -> number of engine layers
    inspector_json: str | None = None


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): TensorRT importable and a CUDA device present."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as e:  # ImportError, or OSError from a missing libnvinfer
        return False, f"TensorRT is not installed here ({type(e).__name__}); pip install 'mpq-export[trt]' on a GPU machine"
    if not hasattr(trt, "Builder"):  # e.g. only tensorrt-stubs' .pyi files: a namespace package, no library
        return False, "TensorRT is not installed here (only its type stubs); pip install 'mpq-export[trt]' on a GPU machine"
    try:
        import tensorrt as trt

        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        if builder is None:
            return False, "TensorRT could not create a builder (no CUDA GPU?)"
    except Exception as e:
        return False, f"TensorRT cannot start ({str(e).splitlines()[0][:120]}): no usable CUDA GPU"
    return True, f"TensorRT {trt.__version__}"


def _precisions(inspector_json: str) -> dict[str, int]:
    """Count engine layers by the data type of their first input, e.g. {'Int8': 40, 'Half': 80}."""
    counts: dict[str, int] = {}
    try:
        layers = json.loads(inspector_json).get("Layers", [])
    except ValueError:
        return counts
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        fmt = " ".join(str(i.get("Format/Datatype", "")) for i in layer.get("Inputs", [])[:1])
        m = re.search(r"\b(Int4|INT4|Int8|INT8|FP8E4M3|Fp8|FP8|Half|FP16|Float|FP32|BF16)\b", fmt)
        key = {"INT4": "Int4", "INT8": "Int8", "FP8E4M3": "FP8", "Fp8": "FP8", "FP16": "Half", "FP32": "Float"}.get(m.group(1), m.group(1)) if m else "other"
        counts[key] = counts.get(key, 0) + 1
    return counts


def profile_shapes(info: ModelInfo, sample_shape: tuple[int, int, int],
                   batches: tuple[int, int, int]) -> dict[str, list[tuple[int, ...]]]:
    """The optimization profile (min, opt, max shape per input) of the engine: the batch dimension over
    `batches` where the model leaves it dynamic, the sample at `sample_shape`, other dynamic dimensions
    at the model's sequence length. Scalar inputs need none. The Polygraphy replay command takes the
    same shapes (polygraphy_replay), so it builds the engine this module builds."""
    out = {}
    for spec in [info.sample, info.timestep, *info.conditioning]:
        if len(spec.shape) == 0:
            continue
        per_batch = []
        for b in batches:
            dims = []
            for axis, d in enumerate(spec.shape):
                if isinstance(d, int) and d > 0:
                    dims.append(d)
                elif axis == 0:
                    dims.append(b)
                elif spec is info.sample:
                    dims.append(sample_shape[axis - 1])
                elif info.seq_len:
                    dims.append(info.seq_len)
                else:
                    raise MPQError(f"input '{spec.name}' has a dynamic dimension {axis}; give its size (--seq-len)")
            per_batch.append(tuple(dims))
        out[spec.name] = per_batch
    return out


def build_engine(onnx_path: str, info: ModelInfo, sample_shape: tuple[int, int, int], settings: EngineSettings,
                 engine_path: str) -> EngineResult:
    """Build and save a serialized engine; raise MPQError with the parser's or builder's words."""
    ok, why = tensorrt_status()
    if not ok:
        raise MPQError(why)
    import tensorrt as trt

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.path.abspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MPQError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer precisions in the inspector
    cache_bytes = b""
    if settings.timing_cache and os.path.exists(settings.timing_cache):
        with open(settings.timing_cache, "rb") as cache_file:
            cache_bytes = cache_file.read()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    profile = builder.create_optimization_profile()
    shapes = profile_shapes(info, sample_shape, (settings.min_batch, settings.opt_batch, settings.max_batch))
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name in shapes:
            profile.set_shape(tensor.name, *shapes[tensor.name])
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MPQError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    with open(engine_path, "wb") as engine_file:
        engine_file.write(serialized)
    if settings.timing_cache:
        with open(settings.timing_cache, "wb") as cache_out:
            cache_out.write(memoryview(config.get_timing_cache().serialize()))

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    inspector = engine.create_engine_inspector()
    layer_json = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return EngineResult(path=engine_path, seconds=time.perf_counter() - t0, layer_precisions=_precisions(layer_json),
                        inspector_json=layer_json)


@dataclass(frozen=True)
class EngineStatus:
    """What the report says about the engine: built (with its file and precisions) or why not."""
    status: str  # "not requested" | "skipped: <why>" | "built with TensorRT <version>"
    path: str | None = None  # the engine file, relative to the output folder
    seconds: float | None = None
    layer_precisions: dict[str, int] | None = None  # precision -> engine layers (engine inspector)


def build_engine_or_explain(onnx_path: str, info: ModelInfo, sample_shape, settings: EngineSettings,
                            required: bool) -> EngineStatus:
    """--build-engine auto|yes: build when possible; otherwise a status line (or, with yes, an error)."""
    from mpq_export.util.progress import log

    ok, why = tensorrt_status()
    if not ok:
        if required:
            raise MPQError(f"--build-engine yes: {why}")
        log.warning("[build] skipped: %s", why)
        return EngineStatus(f"skipped: {why}")
    engine_path = os.path.splitext(onnx_path)[0] + ".plan"
    res = build_engine(onnx_path, info, sample_shape, settings, engine_path)
    with open(os.path.splitext(onnx_path)[0] + ".layers.json", "w") as f:
        f.write(res.inspector_json or "{}")
    return EngineStatus(f"built with {why}", os.path.basename(res.path), res.seconds, res.layer_precisions)
