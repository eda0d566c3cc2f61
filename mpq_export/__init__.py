"""mpq-export: mixed-precision INT4/INT8/FP16 Q/DQ export of diffusion UNets.

Stages, one module each, data flowing one way (README, "Package layout"):
export / sd_pipeline -> inspect -> calibrate -> act_ranges / orm (sensitivity) -> allocate (targets)
-> quantize (rounding, weight_storage, fp16_graph) -> trt_rules -> build -> validate
(polygraphy_replay) -> report.
`mpq_export.pipeline.run_pipeline` chains them; the CLI (`mpq_export.cli`) is a thin wrapper.
Heavy imports (torch, diffusers, tensorrt) happen inside the functions that need them.
"""

__version__ = "0.1.0"

from mpq_export.errors import MPQError  # noqa: F401  (the one exception type for user errors)
