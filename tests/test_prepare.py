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
