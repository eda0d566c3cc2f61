"""Target `onnxruntime`: the FP32 graph with Q/DQ that onnxruntime's CPU provider fuses into its
integer kernels (docs/speed.md).

It stores INT4 (packed, opset 21) for convolutions and GEMMs alike. Graph rules: UINT8 activations with
zero point 128 (exactly the symmetric INT8 grid, q - 128 in [-128, 127], without the S8->U8 rewrite
onnxruntime would add); one DequantizeLinear per consumer, as its QDQ fusions expect; each INT8-input
convolution's output quantized too, so DQ -> Conv -> Q becomes QLinearConv (without the output Q it
dequantizes the weight at every call and runs the float convolution; `--float-conv-outputs` trades that
speed for accuracy); INT4 conv weights widened by a Cast that onnxruntime folds at load (it has no INT4
convolution kernel). MatMul/Gemm become MatMulIntegerToFloat (w8a8) and MatMulNBits (w4a16).
"""

from __future__ import annotations

import numpy as np

from mpq_export.targets.base import Target
from mpq_export.formats import CONV_OPS, FP16, GEMM_OPS, W4A8, W4A16, W8A8


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    help = "FP32 graph + Q/DQ its integer CPU kernels fuse (also INT4 convs)"
    formats = {**{op: (W4A8, W8A8, FP16) for op in CONV_OPS}, **{op: (W4A16, W8A8, FP16) for op in GEMM_OPS}}
    demo_budget = 4.5  # the paper's setting: 4-bit convolutions are stored here
    activation_zero_point = np.array(128, dtype=np.uint8)
    dq_per_consumer = True
    widen_int4_conv_weights = True
    handoffs = ("optimum",)  # Optimum's ONNX Runtime pipelines (handoffs/)

    def quantizes_conv_outputs(self, settings) -> bool:
        return settings.integer_conv
