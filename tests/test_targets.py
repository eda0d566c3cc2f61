"""targets: each target offers exactly the formats it stores, cheapest first, and names the rest."""

import pytest

from mpq_export.errors import MPQError
from mpq_export.targets import (CONV_OPS, GEMM_OPS, TARGET_FORMATS, TARGETS, W4A8, W4A16, W8A8, WHY_NOT, check_target,
                                format_for, formats_for, parse_format)


def test_tensorrt_has_no_int4_convolution_and_says_why():
    for op in CONV_OPS:
        assert format_for(op, 4, "tensorrt") is None
        assert "no INT4 convolution" in WHY_NOT[("tensorrt", op, 4)]
        assert format_for(op, 4, "onnxruntime") is W4A8  # onnxruntime stores 4-bit convolutions
    for op in GEMM_OPS:  # TensorRT's INT4 is weight-only, blocked: w4a16
        assert format_for(op, 4, "tensorrt") is W4A16
        assert format_for(op, 8, "tensorrt") is W8A8


def test_every_table_is_cheapest_first_and_covers_every_op():
    for target in TARGETS:
        assert set(TARGET_FORMATS[target]) == set(CONV_OPS) | set(GEMM_OPS)
        for op in TARGET_FORMATS[target]:
            bits = [f.weight_bits for f in formats_for(op, target)]
            assert bits == sorted(bits) and bits[-1] == 16  # FP16 is always the fallback
            assert len(set(bits)) == len(bits)  # one format per stored width: the budget tells them apart


def test_formats_parse_by_name_and_bad_names_are_one_line_errors():
    for target in TARGETS:
        for fmts in TARGET_FORMATS[target].values():
            for f in fmts:
                assert parse_format(f.name) is f
                assert f.quantized == (f.weight_bits < 16)
    with pytest.raises(MPQError, match="unknown format 'w2a8'"):
        parse_format("w2a8")
    with pytest.raises(MPQError, match="--target must be one of tensorrt, onnxruntime"):
        check_target("openvino")
