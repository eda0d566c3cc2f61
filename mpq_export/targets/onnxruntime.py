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
from mpq_export.formats import CONV_OPS, FP16, GEMM_OPS, LOW_RANK_LADDER, W4A8, W4A16, W8A8, W8A8_SQ


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    help = "FP32 graph + Q/DQ its integer CPU kernels fuse (also INT4 convs)"
    formats = {**{op: (W4A8, W8A8, FP16) for op in CONV_OPS},
               **{op: (W4A16, *LOW_RANK_LADDER, W8A8, W8A8_SQ, FP16) for op in GEMM_OPS}}
    demo_budget = 4.5  # the paper's setting: 4-bit convolutions are stored here
    activation_zero_point = np.array(128, dtype=np.uint8)
    dq_per_consumer = True
    widen_int4_conv_weights = True
    handoffs = ("optimum",)  # Optimum's ONNX Runtime pipelines (handoffs/)

    def quantizes_conv_outputs(self, settings) -> bool:
        return settings.integer_conv

    def resolve_quantize_settings(self, settings):
        """--reduce-range auto: on where onnxruntime's integer GEMM can saturate, an x86 CPU without VNNI
        (u8 x s8 pairs summed in 16 bits: docs/quality.md measured 16 dB lost on a transformer), off where it
        cannot (VNNI, or not x86), judged on the CPU this run sees: give it for the CPU that will run the model."""
        from dataclasses import replace

        from mpq_export.core.choices import Switch

        if settings.reduce_range is not Switch.AUTO:
            return settings, [f"--reduce-range {settings.reduce_range}"]
        vnni = cpu_has_vnni()
        if vnni is False:
            return replace(settings, reduce_range=Switch.YES), [
                "--reduce-range auto: this CPU is x86 without VNNI, where onnxruntime's integer GEMM can saturate "
                "full-range INT8 weights, so W8A8 GEMM weights use [-63, 63] (give --reduce-range no for a CPU with "
                "VNNI)"]
        why = "this CPU has VNNI" if vnni else "this CPU is not x86 (or its features are unknown)"
        return replace(settings, reduce_range=Switch.NO), [
            f"--reduce-range auto: {why}, so INT8 weights keep their full range (give --reduce-range yes for an x86 "
            f"CPU without VNNI: AMD Zen 2/3, Intel before Cascade Lake)"]


def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI); False on x86 without it; None when not x86 or
    when the flags cannot be read (Linux's /proc/cpuinfo)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags
