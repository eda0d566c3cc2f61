"""pipeline: output folders appear complete or not at all, never replace a user's files, and each
stage's time and memory are recorded."""

import os

import numpy as np
import pytest

from mpq_export.errors import MPQError
from mpq_export.pipeline import PipelineConfig, StageTimes, _output_folders, _staging_folder, is_our_output


def test_staging_folder_publishes_only_a_finished_output(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        with _staging_folder(str(out)) as tmp:
            (open(os.path.join(tmp, "model.mpq.onnx"), "w")).close()
            raise RuntimeError("the build failed")
    assert os.listdir(tmp_path) == []  # neither the output nor its temporary folder is left
    with _staging_folder(str(out)) as tmp:
        with open(os.path.join(tmp, "report.json"), "w") as f:
            f.write('{"tool": "mpq-export"}')
    assert os.listdir(tmp_path) == ["o"] and is_our_output(str(out))


def test_a_folder_holding_other_files_is_never_an_output(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert not is_our_output(str(tmp_path / "o"))
    with pytest.raises(MPQError, match="choose another -o"):
        _output_folders(PipelineConfig(model="m.onnx", out_dir=str(tmp_path / "o")))
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"


def test_a_budget_list_writes_one_folder_per_budget(tmp_path):
    root, outs = _output_folders(PipelineConfig(model="m.onnx", budgets=(4.5, 8.0), out_dir=str(tmp_path / "s")))
    assert outs == [os.path.join(root, "budget-4.5"), os.path.join(root, "budget-8")]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="per-stage peaks need Linux's /proc")
def test_each_stage_gets_its_own_memory_peak():
    timings = StageTimes().start()
    big = np.ones(300 * 2**20 // 8)  # 300 MB, touched
    del big
    timings["heavy"] = 1.0
    timings["light"] = 0.5
    assert timings.peak_rss_mb["heavy"] > timings.peak_rss_mb["light"] + 200
    assert dict(timings) == {"heavy": 1.0, "light": 0.5}
