"""records: the typed Report survives its JSON form (report.json is Report.to_json())."""

import dataclasses
import json
import os

from mpq_export.report.records import LayerRow, Report

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _golden():
    with open(os.path.join(GOLDEN, "report.json")) as f:
        return json.load(f)


def test_report_round_trips_through_its_json():
    d = _golden()
    fields = {f.name for f in dataclasses.fields(Report)}
    assert set(d) == fields  # report.json is exactly the Report's fields
    rep = Report.from_json(d)
    assert isinstance(rep.layers[0], LayerRow) and rep.validation.per_timestep[0].t == d["validation"]["per_timestep"][0]["t"]
    assert json.loads(json.dumps(rep.to_json())) == d
    assert next(iter(rep.to_json())) == "tool"  # how is_our_output recognises our folders
