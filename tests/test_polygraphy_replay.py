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
