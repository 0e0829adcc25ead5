"""Provenance records written beside every output (the JSON sidecar)."""
from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

from . import __version__
from .io import sha256_file as file_sha256


def provenance(*, method: str, input_path: Path | None, weights: Path | None, seed: int,
               parameters: dict[str, Any]) -> dict[str, Any]:
    """Build the provenance dict: jaxdn version, method, weights hash, parameters, seed, input SHA-256."""
    import jax
    record = {
        "jaxdn_version": __version__,
        "method": method,
        "parameters": {k: v for k, v in parameters.items() if v is not None},
        "seed": seed,
        "input": str(input_path) if input_path else None,
        "input_sha256": file_sha256(input_path) if input_path and Path(input_path).is_file() else None,
        "weights": str(weights) if weights else None,
        "weights_sha256": file_sha256(weights) if weights and Path(weights).is_file() else None,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return record
