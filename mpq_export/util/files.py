"""Reading the JSON files users hand us, with one-line errors."""

from __future__ import annotations

import json

from mpq_export.util.errors import MPQError


def read_json_object(path: str, what: str) -> dict:
    """A diffusers JSON file (config.json, model_index.json, scheduler_config.json) as a dict, or a one-line error."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise MPQError(f"{path} is not readable JSON ({type(e).__name__}); give {what} saved with save_pretrained") from None
    if not isinstance(cfg, dict):
        raise MPQError(f"{path} is not a JSON object; give {what} saved with save_pretrained")
    return cfg
