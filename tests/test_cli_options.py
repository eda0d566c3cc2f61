"""The CLI's option table: every option reaches the setting it names, with the value given, and an option
left out keeps the library's default (the CLI sets no defaults of its own)."""

import pytest

from mpq_export.cli import _library_default, build_parser, config_from_args, options
from mpq_export.config import PipelineConfig


def _setting(cfg, path):
    value = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _config(argv):
    args = build_parser().parse_args(["model.onnx", *argv])
    return config_from_args(args, args.model, getattr(args, "budget", (8.0,)), getattr(args, "output", None))


@pytest.mark.parametrize("opt", [o for o in options() if o.setting], ids=lambda o: o.flags[-1])
def test_every_option_reaches_the_setting_it_names(opt):
    assert opt.example is not None, f"{opt.flags[-1]} needs an example for this test"
    argv, expected = opt.example
    assert expected != _library_default(opt.setting)  # else the test could not tell the option was dropped
    assert _setting(_config(list(argv)), opt.setting) == expected


def test_options_not_given_keep_the_library_defaults():
    cfg, lib = _config([]), PipelineConfig(model="model.onnx")
    for opt in options():
        if opt.setting and opt.setting != "budgets":
            assert _setting(cfg, opt.setting) == _setting(lib, opt.setting), opt.flags


def test_every_setting_record_field_has_an_option_or_is_internal():
    """A new settings field without a CLI option is a decision, listed here, not an accident."""
    import dataclasses

    # for Python callers and tools/ studies only: the positional model, the report's extras, a research knob;
    # calibration.attention_inputs follows --fp8-attention (config.py sets it)
    internal = {"model", "act_costs_limit_s", "sample_grid", "notes", "decisions", "act_calib.over_steps", "quantize.clip_grid",
                "calibration.attention_inputs"}
    named = {o.setting for o in options() if o.setting}
    for f in dataclasses.fields(PipelineConfig):
        value = _setting(PipelineConfig(model="m.onnx"), f.name)
        if dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                assert {f"{f.name}.{g.name}"} & (named | internal), f"{f.name}.{g.name} has no CLI option"
        else:
            assert f.name in named or f.name in internal, f"{f.name} has no CLI option"
