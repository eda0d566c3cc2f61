"""mpq-export: mixed-precision INT4/INT8/FP16 Q/DQ export of diffusion denoisers.

Folders by role, imports running one way (CONTRIBUTING.md, "Package layout"):
cli > pipeline, config > report > stages > inputs > targets > runtime > util.
Stages: prepare/export -> inspect -> calibrate -> act_ranges, orm / sensitivity -> allocate -> quantize
-> validate -> diagnostics -> report. `mpq_export.pipeline.run_pipeline` chains them; the CLI is a thin
wrapper. Heavy imports (torch, diffusers, tensorrt) happen inside the functions that need them.
"""

__version__ = "0.1.0"

from mpq_export.util.errors import MPQError  # noqa: F401  (the one exception type for user errors)
