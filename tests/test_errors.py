"""errors: the one user-error type, and the checks every option shares (numbers, paths, comma lists)."""

import math
import pathlib

import numpy as np
import pytest

from mpq_export.util.errors import MPQError, comma_list, require_int, require_number, require_path


def test_comma_lists_split_one_way_from_text_or_sequences():
    assert comma_list("4, 8,,16") == ("4", "8", "16") and comma_list(("a", "b")) == ("a", "b")
    assert comma_list(7.5) == (7.5,) and comma_list(None) == () and comma_list(np.array([1, 2])) == (1, 2)


def test_numbers_and_paths_are_checked_with_their_flag_named():
    assert require_number(np.float32(2.5), "--x") == 2.5
    for bad in (math.nan, "2", True):
        with pytest.raises(MPQError, match="--x must be a finite number"):
            require_number(bad, "--x")
    with pytest.raises(MPQError, match="--n must be an integer >= 0, got -1"):
        require_int(-1, "--n", 0)
    assert require_path(pathlib.Path("a/b"), "-o") == "a/b"
    with pytest.raises(MPQError, match="-o must be a path"):
        require_path(3, "-o")
