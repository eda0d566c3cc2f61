"""choices: a value of a fixed set is checked once where it is made and then compared as itself."""

import json

import pytest

from mpq_export.core.choices import BuildMode, Scorer
from mpq_export.util.errors import MPQError


def test_choices_read_and_print_as_their_values():
    assert Scorer.of("trajectory", "--importance") is Scorer.TRAJECTORY and Scorer.TRAJECTORY.measured
    assert not Scorer.ORM.measured and f"{Scorer.ORM}" == "orm" and json.dumps([Scorer.ORM]) == '["orm"]'
    assert BuildMode.of("no", "--build-engine") is BuildMode.NO
    assert Scorer.choices() == ("auto", "orm", "orm-error", "probed", "sensitivity", "trajectory")  # NONE: a baseline


@pytest.mark.parametrize("value", ["none", "ORM", "", 3])
def test_an_unknown_value_is_a_one_line_error_naming_the_choices(value):
    with pytest.raises(MPQError, match="--importance must be one of auto, orm, orm-error, probed, sensitivity, trajectory"):
        Scorer.of(value, "--importance")
