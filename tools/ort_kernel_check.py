#!/usr/bin/env python3
"""Does onnxruntime's integer-kernel form of a quantized model compute what its Q/DQ say?

    python tools/ort_kernel_check.py OUT_DIR

For an mpq-export output folder: the noise-prediction SQNR (dB) against the FP32 model on the saved
validation inputs, per step, with the quantized model run by the session mpq-export validates with
(onnxruntime's default optimisations, which fuse Q/DQ into integer kernels) and at ORT_ENABLE_BASIC
(Q/DQ computed as specified). A gap between the two is the kernels' own error, e.g. the 16-bit
saturation of x86 integer GEMMs without VNNI that `--reduce-range` avoids (docs/quality.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mpq_export.runtime.ort import build_feeds, ort_session  # noqa: E402
from mpq_export.runtime.sampler import timestep_value  # noqa: E402
from mpq_export.stages.inspect import inspect_model  # noqa: E402
from mpq_export.util.metrics import sqnr_db  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    args = ap.parse_args()
    import onnxruntime as ort

    with open(os.path.join(args.out_dir, "report.json")) as f:
        report = json.load(f)
    info = inspect_model(report["model"])
    z = np.load(os.path.join(args.out_dir, "validation_inputs.npz"))
    cond = {c.name: z[c.name] for c in info.conditioning}
    steps = [(x, timestep_value(t)) for x, t in zip(z[info.sample.name], z["timesteps"])]
    fp32 = ort_session(report["model"])
    refs = [fp32.run([info.output], build_feeds(info, x, t, cond))[0] for x, t in steps]
    quantized = os.path.join(args.out_dir, "model.mpq.onnx")
    basic = ort.SessionOptions()
    basic.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    for label, sess in (("default optimisations (integer kernels)", ort_session(quantized)),
                        ("ORT_ENABLE_BASIC (Q/DQ as specified)",
                         ort.InferenceSession(quantized, basic, providers=["CPUExecutionProvider"]))):
        vals = [sqnr_db(ref, sess.run([info.output], build_feeds(info, x, t, cond))[0])
                for ref, (x, t) in zip(refs, steps)]
        print(f"{label:42s} mean SQNR {np.mean(vals):6.2f} dB  per step: {' '.join(f'{v:.1f}' for v in vals)}")


if __name__ == "__main__":
    main()
