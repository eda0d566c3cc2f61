"""prepare: what a run starts from: diffusers folders exported once per content into the cache, prompts
encoded once, a cache that cannot be written a warning, and damaged or foreign cache entries remade."""

import os

import numpy as np

import pytest
from conftest import run_cli

FAST = ("--steps", "6", "--timesteps", "2", "--samples", "4", "--val-samples", "2", "--no-stability", "--no-act-costs")


def test_a_read_only_cache_is_a_warning_for_a_pipeline_folder(pipeline_dir, tmp_path):
    """The export and the encoded prompts go to a scratch folder for this run; the cache is left as it was."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders: the permission cannot be tested as root")
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        code, _, err = run_cli(pipeline_dir, "--budget", "8", "-o", tmp_path / "o", "--cache-dir", cache, *FAST)
    finally:
        cache.chmod(0o755)
    assert code == 0, err
    assert "cannot write the cache" in err and list(cache.iterdir()) == []


def test_a_read_only_cache_is_a_warning_even_as_root(pipeline_dir, tmp_path, monkeypatch):
    """The same as seen by the code (root ignores permissions): a cache it cannot write into."""
    import mpq_export.inputs.prepare as prepare

    monkeypatch.setattr(prepare, "is_writable", lambda folder: False)
    code, _, err = run_cli(pipeline_dir, "--budget", "8", "-o", tmp_path / "o", "--cache-dir", tmp_path / "c", *FAST)
    assert code == 0, err
    assert "cannot write the cache" in err
    assert not list((tmp_path / "c").glob("export-*")) and not list((tmp_path / "c").glob("prompts-*"))


def test_temporaries_of_killed_runs_are_removed_from_the_cache(pipeline_dir, tmp_path):
    """An export killed mid-write leaves export-HASH.tmp-PID; the next run removes it when PID is gone
    (and leaves a live process's alone)."""
    cache = tmp_path / "c"
    dead = cache / "export-0123456789abcdef0123.tmp-999999999"
    live = cache / f"export-0123456789abcdef0123.tmp-{os.getpid()}"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(b"partial")
    code, _, err = run_cli(pipeline_dir, "--budget", "8", "-o", tmp_path / "o", "--cache-dir", cache, *FAST)
    assert code == 0, err
    assert not dead.exists() and live.exists()


def test_cached_exports_and_prompts_of_something_else_are_made_again(pipeline_dir, tmp_path):
    """Cache entries say what they were made from; one made from something else under this name (copied,
    renamed, or a hash collision of names) is rebuilt with a warning, never used."""
    import logging

    from mpq_export.config import PipelineConfig
    from mpq_export.inputs.prepare import prepare_model

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    cache = tmp_path / "c"
    cfg = PipelineConfig(model=pipeline_dir, cache_dir=str(cache))
    prepare_model(cfg.model_request, str(cache))
    (ident,) = cache.glob("export-*/identity.json")
    ident.write_text('{"source_sha256": "another model"}')
    (prompts,) = cache.glob("prompts-*.npz")
    with np.load(prompts) as z:
        arrays = dict(z)
    arrays["mpq_export_identity"] = np.array("other prompts")
    np.savez(prompts, **arrays)
    handler = Lines()
    logging.getLogger("mpq_export").addHandler(handler)
    try:
        again = prepare_model(cfg.model_request, str(cache))
    finally:
        logging.getLogger("mpq_export").removeHandler(handler)
    text = "\n".join(handler.lines)
    assert "does not say it was made from this model" in text and "encoded from other prompts" in text
    assert os.path.exists(again.onnx_path) and ident.read_text() != '{"source_sha256": "another model"}'


# Broken transformer inputs: each refused in one line naming the part and the fix, before the export and the
# prompt encoding (the log has no [export] line), leaving no output behind.
def _refused_before_the_work(folder, tmp_path, *needles, args=("--budget", "4.5")):
    out = tmp_path / "out"
    code, _, err = run_cli(folder, *args, "-o", out, "--cache-dir", tmp_path / "c", *FAST)
    lines = err.strip().splitlines()
    assert code == 1 and lines[-1].startswith("mpq-export: error:") and "Traceback" not in err, err
    assert "[export]" not in err and "[prompts]" not in err, err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    assert not out.exists()


def _copy(src, tmp_path, name="pipe"):
    import shutil

    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_json(path, **changes):
    import json

    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("damage, needles", [
    ("missing_t5", ("text_encoder_3", "missing")),
    ("truncated_encoder", ("text_encoder_2", "cut short")),
    ("other_pipeline_class", ("StableDiffusionPipeline", "SD3Transformer2DModel")),
    ("dead_tokenizer", ("tokenizer", "cannot encode text")),
    ("ddim_scheduler", ("flow matching", "DDIMScheduler")),
    ("absurd_shift", ("shift",)),
])
def test_broken_sd3_pipeline_folders_are_refused_before_the_work(sd3_pipeline_dir, tmp_path, damage, needles):
    import shutil

    pipe = _copy(sd3_pipeline_dir, tmp_path)
    if damage == "missing_t5":
        shutil.rmtree(pipe / "text_encoder_3")
    elif damage == "truncated_encoder":
        (weights,) = [p for p in (pipe / "text_encoder_2").iterdir() if p.suffix == ".safetensors"]
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    elif damage == "other_pipeline_class":
        _edit_json(pipe / "model_index.json", _class_name="StableDiffusionPipeline")
    elif damage == "dead_tokenizer":
        for f in (pipe / "tokenizer").iterdir():
            if f.name in ("vocab.json", "merges.txt", "tokenizer.json"):
                f.unlink()
    elif damage == "ddim_scheduler":
        _edit_json(pipe / "scheduler" / "scheduler_config.json", _class_name="DDIMScheduler")
    else:
        _edit_json(pipe / "scheduler" / "scheduler_config.json", shift=1e9)
    _refused_before_the_work(pipe, tmp_path, *needles)


@pytest.mark.parametrize("change", [+1, -1])
def test_a_config_that_disagrees_with_the_weights_is_refused(flux_folder, tmp_path, change):
    """More blocks than the weights hold (diffusers would initialise the rest at random) or fewer (it would
    drop stored tensors): an error naming both counts' side, nothing written."""
    folder = _copy(flux_folder, tmp_path, "flux")
    cfg = folder / "transformer" / "config.json"
    import json

    _edit_json(cfg, num_single_layers=json.loads(cfg.read_text())["num_single_layers"] + change)
    out = tmp_path / "out"
    code, _, err = run_cli(folder / "transformer", "--budget", "4.5", "-o", out, "--cache-dir", tmp_path / "c", *FAST)
    assert code == 1 and "the weights and config.json disagree" in err and "Traceback" not in err, err
    assert ("are missing" if change > 0 else "have no place") in err.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.parametrize("case, args, needles", [
    ("emit_trt_demo", ("--budget", "4.5", "--emit", "trt-demo"), ("FluxTransformer2DModel", "drop --emit trt-demo")),
    ("emit_optimum", ("--budget", "4.5", "--target", "onnxruntime", "--emit", "optimum"), ("drop --emit optimum",)),
    ("budget", ("--budget", "3"), ("outside what this model can reach",)),
    ("dynamic_shift", ("--budget", "4.5"), ("base_image_seq_len",)),
])
def test_what_the_configs_decide_is_refused_before_the_export(flux_folder, tmp_path, case, args, needles):
    folder = _copy(flux_folder, tmp_path, "flux")
    if case == "dynamic_shift":
        _edit_json(folder / "scheduler" / "scheduler_config.json", base_image_seq_len=4096, max_image_seq_len=4096)
    _refused_before_the_work(folder / "transformer", tmp_path, *needles, args=args)
