#!/usr/bin/env python3
"""Peak memory of the tensorrt target's FP16 graph conversion of one FP32 ONNX model.

    python tools/measure_fp16_conversion.py MODEL.onnx

Loads the model with its weights (as the quantize stage does) and converts it with
`mpq_export.targets.fp16_graph.to_fp16_graph`; prints the process's peak RSS after loading and after
converting, so the conversion's own cost can be compared across versions of the code.
"""

from __future__ import annotations

import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mpq_export.targets.fp16_graph import to_fp16_graph  # noqa: E402
from mpq_export.util.onnx_io import load_for_edit  # noqa: E402


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(2)
    t0 = time.perf_counter()
    model = load_for_edit(sys.argv[1])
    loaded = peak_gib()
    to_fp16_graph(model)
    print(f"peak RSS after loading {loaded:.2f} GiB, after the FP16 conversion {peak_gib():.2f} GiB "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
