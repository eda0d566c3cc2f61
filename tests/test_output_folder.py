"""output_folder: output folders appear complete or not at all and never replace a user's files."""

import os

import pytest

from mpq_export.util.errors import MPQError
from mpq_export.util.output_folder import is_our_output, output_folders, staging_folder


def test_staging_folder_publishes_only_a_finished_output(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        with staging_folder(str(out)) as tmp:
            (open(os.path.join(tmp, "model.mpq.onnx"), "w")).close()
            raise RuntimeError("the build failed")
    assert os.listdir(tmp_path) == []  # neither the output nor its temporary folder is left
    with staging_folder(str(out)) as tmp:
        with open(os.path.join(tmp, "report.json"), "w") as f:
            f.write('{"tool": "mpq-export"}')
    assert os.listdir(tmp_path) == ["o"] and is_our_output(str(out))
    with staging_folder(str(out)) as tmp:  # an earlier output of ours is replaced
        with open(os.path.join(tmp, "report.json"), "w") as f:
            f.write('{"tool": "mpq-export", "budget": 6}')
    assert "6" in (out / "report.json").read_text() and os.listdir(tmp_path) == ["o"]


def test_a_folder_holding_other_files_is_never_an_output(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert not is_our_output(str(tmp_path / "o"))
    with pytest.raises(MPQError, match="choose another -o"):
        output_folders("m.onnx", str(tmp_path / "o"), (8.0,))
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"


def test_a_budget_list_writes_one_folder_per_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, outs = output_folders("m.onnx", str(tmp_path / "s"), (4.5, 8.0))
    assert outs == [os.path.join(root, "budget-4.5"), os.path.join(root, "budget-8")]
    root, outs = output_folders("dir/unet.onnx", None, (8.0,))
    assert outs == [root] and root == os.path.join(os.getcwd(), "unet.mpq")
