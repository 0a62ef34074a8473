"""Bundled ONNX models, their metadata and the scripts that train them."""

from __future__ import annotations

import pathlib


def models_dir() -> pathlib.Path:
    """Return the folder holding the bundled models (this package's folder)."""
    return pathlib.Path(__file__).resolve().parent
