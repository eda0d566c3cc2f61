"""The report stage: report.md is rendered from report.json (a golden pair from a real tiny run), a
Report survives the JSON round trip, and the markdown states what a user must see."""

import json
import os

from mpq_export.report.markdown import render_markdown as _render
from mpq_export.report.records import Report

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def render_markdown(d: dict) -> str:
    """report.md of a report.json dict, through the typed Report it is rendered from."""
    return _render(Report.from_json(d))


def _golden():
    with open(os.path.join(GOLDEN, "report.json")) as f:
        return json.load(f)


def test_report_md_renders_exactly_from_report_json():
    """tests/golden holds report.json and report.md of one real run (the tests' tiny UNet2DModel, onnxruntime
    target, budget 8): rendering must reproduce the markdown byte for byte. After an intended change of
    the report's layout, regenerate both files with a tiny run and review the diff:
        python -c "from tests import models; models.export(models.tiny_unet2d(), '/tmp/g')"
        mpq-export /tmp/g/model.onnx --budget 8 --target onnxruntime --steps 6 --timesteps 2 --samples 4 \
            --val-samples 2 --calib-mem-mb 256 -o /tmp/g/out && cp /tmp/g/out/report.{json,md} tests/golden/
    """
    with open(os.path.join(GOLDEN, "report.md")) as f:
        assert render_markdown(_golden()) == f.read()


def test_markdown_states_budget_bits_and_validation():
    d = _golden()
    md = render_markdown(d)
    assert f"**{d['budget']:g}** average weight bits" in md
    assert f"{d['counted_bits']:.4f}" in md  # the count from the file, beside the allocation's
    assert f"{d['validation']['sample_psnr_db']:.2f}" in md
    for row in d["layers"][:3]:
        assert row["name"] in md
    d2 = json.loads(json.dumps(d))
    d2["budget"] = 6.5
    assert "**6.5** average weight bits" in render_markdown(d2)  # rendered from the data, not fixed text


def test_the_layer_table_names_what_the_measured_scorer_measured():
    d = json.loads(json.dumps(_golden()))
    assert "| probed gain x expected error at 4 / 8 bits |" in render_markdown(d)  # the default scorer's
    d["allocation"]["scorer"] = "orm"
    for row in d["layers"]:
        row["sensitivity"] = None
    assert "error at 4 / 8 bits" not in render_markdown(d)  # ORM: no measured column
    for row in d["layers"]:
        row["sensitivity"] = {"w4a8": 2e-5, "w8a8": 1e-6}
    for scorer, heading in (("sensitivity", "noise-prediction error"), ("trajectory", "final-sample error")):
        d["allocation"]["scorer"] = scorer
        assert f"| {heading} at 4 / 8 bits |" in render_markdown(d)


def test_the_title_names_what_the_user_gave():
    d = json.loads(json.dumps(_golden()))
    assert render_markdown(d).startswith(f"# mpq-export report: {os.path.basename(d['model'])}\n\n- model:")
    d["input"] = "/models/patches_ddpm/unet"  # a diffusers folder, exported to d["model"] by the run
    md = render_markdown(d)
    assert md.startswith("# mpq-export report: patches_ddpm/unet\n\n- input: `/models/patches_ddpm/unet`\n- model:")
