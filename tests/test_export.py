"""export: a diffusers UNet folder becomes an ONNX file that says what it was exported for."""

import json

import onnx
import pytest

from mpq_export.util.errors import MPQError
from mpq_export.inputs.export import export_diffusers, find_scheduler_config, is_diffusers_folder, read_unet_config
from mpq_export.stages.inspect import inspect_model
from mpq_export.util.onnx_io import SAMPLE_SIZE_KEY, SEQ_LEN_KEY, SOURCE_CLASS_KEY


def test_a_diffusers_folder_exports_with_its_metadata(tmp_path):
    pytest.importorskip("torch")
    import models

    unet_dir = tmp_path / "unet"
    models.tiny_unet2d_condition().save_pretrained(str(unet_dir))
    assert is_diffusers_folder(str(unet_dir))
    res = export_diffusers(str(unet_dir), str(tmp_path / "out" / "model.onnx"), seq_len=12)
    assert res.model_class == "UNet2DConditionModel" and res.params > 0
    meta = {p.key: p.value for p in onnx.load(res.onnx_path, load_external_data=False).metadata_props}
    assert meta[SAMPLE_SIZE_KEY] == "8,8" and meta[SEQ_LEN_KEY] == "12" and meta[SOURCE_CLASS_KEY] == res.model_class
    info = inspect_model(res.onnx_path)  # the inspect stage reads what the export wrote
    assert info.sample_size == (8, 8) and info.seq_len == 12
    assert [c.name for c in info.conditioning] == ["encoder_hidden_states"]


def test_broken_or_foreign_configs_are_one_line_errors(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(MPQError, match="config.json"):
        read_unet_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    pytest.importorskip("diffusers")
    with pytest.raises(MPQError, match="'AutoencoderKL' model; supported: UNet2DModel, UNet2DConditionModel"):
        export_diffusers(str(tmp_path), str(tmp_path / "m.onnx"))


def test_scheduler_config_is_found_beside_or_in_the_pipeline(tmp_path):
    unet = tmp_path / "pipe" / "unet"
    unet.mkdir(parents=True)
    assert find_scheduler_config(str(unet)) is None
    sched = tmp_path / "pipe" / "scheduler"
    sched.mkdir()
    (sched / "scheduler_config.json").write_text("{}")
    assert find_scheduler_config(str(unet)) == str(sched / "scheduler_config.json")
    (unet / "scheduler_config.json").write_text("{}")  # one beside the UNet wins
    assert find_scheduler_config(str(unet)) == str(unet / "scheduler_config.json")
