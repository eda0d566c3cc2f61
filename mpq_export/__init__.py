"""mpq-export: mixed-precision Q/DQ export of diffusion denoisers (UNets and transformers).

Folders by role, imports running one way (CONTRIBUTING.md, "Package layout"):
cli > pipeline > config > report > handoffs > stages > inputs > targets > formats > runtime > core > util.
Stages: prepare/export -> inspect -> calibrate -> act_ranges, orm / sensitivity -> allocate -> quantize
-> validate -> diagnostics -> report. `mpq_export.pipeline.run_pipeline` chains them; the CLI is a thin
wrapper. Heavy imports (torch, diffusers, tensorrt) happen inside the functions that need them.
"""

__version__ = "0.1.0"

from mpq_export.util.errors import MPQError  # noqa: F401  (the one exception type for user errors)
