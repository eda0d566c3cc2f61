"""polygraphy_replay: the data loader written beside the model replays validation's inputs, and the
commands point at the files of the final output folder."""

import importlib.util
import os

import numpy as np

from mpq_export.stages.inspect import inspect_model
from mpq_export.runtime.polygraphy_replay import MIN_T_FRACTION, PolygraphyReplay, write_files


def test_loader_yields_the_saved_steps_above_min_t(unet_onnx, tmp_path):
    info = inspect_model(unet_onnx)
    xs = np.random.default_rng(0).standard_normal((3, 4, 1, 16, 16)).astype(np.float32)  # [K, n, ...]
    ts = np.array([999, 500, 10])
    np.savez(tmp_path / "validation_inputs.npz", **{info.sample.name: xs, "timesteps": ts})
    replay = write_files(str(tmp_path), "/final/out", info, unet_onnx, num_train_timesteps=1000)
    assert isinstance(replay, PolygraphyReplay) and replay.min_t == int(MIN_T_FRACTION * 1000)
    assert all("/final/out/" in cmd for cmd in replay.commands.values())
    spec = importlib.util.spec_from_file_location("loader", os.path.join(tmp_path, "polygraphy_data.py"))
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    feeds = list(loader.load_data())
    assert len(feeds) == 2  # t = 10 < min_t is left to mpq-export's own table
    assert np.array_equal(feeds[0][info.sample.name], xs[0])
    assert np.all(feeds[1][info.timestep.name] == 500) and feeds[1][info.timestep.name].shape == (4,)


def _polygraphy_parse(cmd: str):
    """Parse one `polygraphy run ...` command with Polygraphy's own argument parser (as its CLI does),
    including each argument group's own checks; returns the parsed arguments."""
    import argparse
    import shlex

    from polygraphy.tools.registry import TOOL_REGISTRY

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="tools")
    for tool in TOOL_REGISTRY:
        tool.setup_parser(sub)
    argv = shlex.split(cmd)
    assert argv[0] == "polygraphy"
    args, unknown = parser.parse_known_args(argv[1:])
    assert not unknown, unknown
    args.subcommand.parse(args)
    return args


def test_the_gpu_command_is_polygraphys_and_builds_what_the_engine_builder_builds(cond_unet_onnx, tmp_path):
    """Strongly typed (an FP16 + Q/DQ graph needs it), the engine builder's optimization level and
    shapes for every dynamic input covering the loader's batch, onnxruntime at the CPU command's level."""
    from mpq_export.runtime.engine import EngineSettings, profile_shapes

    info = inspect_model(cond_unet_onnx)
    replay = write_files(str(tmp_path), "/final/out", info, cond_unet_onnx, sample_shape=(4, 8, 8), batch=16)
    gpu = next(c for k, c in replay.commands.items() if k.startswith("GPU"))
    args = _polygraphy_parse(gpu)
    assert args.strongly_typed and args.builder_optimization_level == 3
    assert args.graph_optimization_level == "ORT_ENABLE_BASIC"
    assert "--trt" in gpu and "--onnxrt" in gpu
    profile = profile_shapes(info, (4, 8, 8), (1, 2, 16))
    for which, i in (("min", 0), ("opt", 1), ("max", 2)):
        for name, shapes in profile.items():
            assert f"{name}:[{','.join(map(str, shapes[i]))}]" in gpu, (which, name)
    assert profile[info.sample.name][2][0] == 16 >= EngineSettings().max_batch  # the loader's 16 rows fit
    for cmd in replay.commands["CPU: FP32 ONNX vs quantized ONNX (onnxruntime)"].split(" && "):
        _polygraphy_parse(cmd)


def test_an_onnxruntime_target_report_prints_no_tensorrt_command(cond_unet_onnx, tmp_path):
    """A graph TensorRT cannot build (the onnxruntime target's INT4 convolutions, UINT8 Q/DQ) gets only the
    runtimes that run it."""
    info = inspect_model(cond_unet_onnx)
    replay = write_files(str(tmp_path), "/final/out", info, cond_unet_onnx, sample_shape=(4, 8, 8), batch=16,
                         with_tensorrt=False)
    assert list(replay.commands) == ["CPU: FP32 ONNX vs quantized ONNX (onnxruntime)"]
    assert not any("--trt" in c for c in replay.commands.values())
