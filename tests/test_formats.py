"""formats: quantized weights are written at their own width (INT4 packed, two per byte)."""

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

from mpq_export.formats import FORMATS, W4A8, W4A16, W8A8, parse_format
from mpq_export.util.errors import MPQError


def test_int8_weights_are_stored_as_int8():
    v = np.arange(-8, 8, dtype=np.int64).reshape(4, 4)
    stored, dtype = W8A8.stored_constant(v)
    assert dtype == "int8" and stored.dtype == np.int8 and np.array_equal(stored, v)


def test_int4_weights_are_packed_and_round_trip_with_an_odd_count():
    rng = np.random.default_rng(0)
    v = rng.integers(-8, 8, size=(3, 5))  # 15 values: the last byte holds one nibble
    for fmt in (W4A8, W4A16):
        stored, dtype = fmt.stored_constant(v)
        tensor = stored.tensor
        assert dtype == "int4" and tensor.data_type == TensorProto.INT4
        assert len(tensor.raw_data) == 8  # ceil(15 / 2) bytes: 4 bits per weight in the file
        assert np.array_equal(numpy_helper.to_array(tensor).astype(np.int8), v)


def test_formats_parse_by_name_and_bad_names_are_one_line_errors():
    for f in FORMATS:
        assert parse_format(f.name) is f
        assert f.quantized == (f.weight_bits < 16)
    with pytest.raises(MPQError, match="unknown format 'w2a8'"):
        parse_format("w2a8")
