#!/usr/bin/env python3
"""Per-layer INT4 weight error of a model's GEMMs under three roundings, measured on the layer's output.

    python tools/int4_error.py MODEL [--calib-data FILE] [--block-size 128]

For every MatMul/Gemm it prints the relative output error ||(W - W_hat) X||^2 / ||W X||^2 (dB, lower
is better) over the calibration inputs X (the input statistics mpq-export's GPTQ uses, from the
cache when a run made them) for the w4a16 format:
- nearest: MSE-clipped block scales, rounded to nearest;
- gptq: the default (GPTQ on the same scales);
- awq+gptq: AWQ-style input-channel scaling before GPTQ (W' = W diag(s), s = rms(x)^alpha, alpha from
  0 to 0.75 chosen per layer on the same error), which a deployment would pay for with a Mul on the
  layer's input. It shows whether that extra op would buy anything on top of GPTQ.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALPHAS = (0.125, 0.25, 0.375, 0.5, 0.75)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--calib-data")
    ap.add_argument("--block-size", type=int, default=128)
    a = ap.parse_args()

    import onnx
    from onnx import numpy_helper

    from mpq_export.config import PipelineConfig
    from mpq_export.inputs.prepare import prepare_model
    from mpq_export.runtime.sampler import NoiseSchedule
    from mpq_export.stages.calibrate import calibrate
    from mpq_export.stages.inspect import inspect_model
    from mpq_export.formats import QuantizeSettings
    from mpq_export.stages.quantize import quantize_layer_weight
    from mpq_export.formats.gptq import from_matrix, output_error, weight_matrix
    from mpq_export.formats import GEMM_OPS, W4A16
    from mpq_export.util.cache import default_cache_dir

    cfg = PipelineConfig(model=a.model, calib_data=a.calib_data)
    cache = default_cache_dir()
    prepared = prepare_model(cfg.model_request, cache)
    info = inspect_model(prepared.onnx_path, None, None)
    cal = replace(cfg.calibration, guidance_scale=prepared.guidance_scale(cfg.calibration.guidance_scale),
                  resolution=cfg.calibration.resolution or prepared.default_resolution)
    stats = calibrate(info, cal, NoiseSchedule.from_config(prepared.scheduler_config),
                      cfg.calib_data or prepared.calib_data, cache, cfg.runtime, input_statistics=True)
    graph = onnx.load(prepared.onnx_path).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    st = QuantizeSettings(block_size=a.block_size)

    rows = []
    print(f"{'layer':55s} {'K':>5s} {'nearest':>8s} {'gptq':>8s} {'awq+gptq':>9s} alpha")
    for layer in info.layers:
        h = stats.hessians.get(layer.name)
        w = weights.get(layer.weight_name)
        if layer.op_type not in GEMM_OPS or h is None or w is None:
            continue
        w = np.asarray(w, np.float32)
        wm = weight_matrix(w, layer)  # [N, K]
        ref = output_error(wm, np.zeros_like(wm), h)

        def err(w_hat: np.ndarray) -> float:
            return 10 * np.log10(max(output_error(wm, weight_matrix(w_hat, layer), h) / ref, 1e-30))

        nearest = err(quantize_layer_weight(layer, w, W4A16, replace(st, rounding="nearest")).dequantize())
        gptq = err(quantize_layer_weight(layer, w, W4A16, st, h).dequantize())
        rms = np.sqrt(np.maximum(np.diag(h), 1e-12))
        best, alpha = gptq, 0.0
        for al in ALPHAS:
            s = (rms / rms.mean()) ** al  # per input channel (K)
            scaled = from_matrix(wm * s[None, :], w.shape, layer)
            q = quantize_layer_weight(layer, scaled, W4A16, st, h / s[:, None] / s[None, :]).dequantize()
            e = err(from_matrix(weight_matrix(q, layer) / s[None, :], w.shape, layer))
            if e < best:
                best, alpha = e, al
        rows.append((nearest, gptq, best))
        print(f"{layer.name:55s} {wm.shape[1]:5d} {nearest:8.2f} {gptq:8.2f} {best:9.2f} {alpha}")
    m = np.mean(rows, axis=0)
    print(f"mean over {len(rows)} GEMMs (dB): nearest {m[0]:.2f}, gptq {m[1]:.2f}, awq+gptq {m[2]:.2f}")


if __name__ == "__main__":
    main()
