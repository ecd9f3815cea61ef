from __future__ import annotations

from pathlib import Path

import pytest

from toolkit import zoo


@pytest.fixture(scope="session")
def zoo_path():
    """Export (once, cached) a zoo model and return its ONNX path."""

    def get(name: str, exporter: str = "torchscript") -> Path:
        return zoo.export(name, exporter=exporter)

    return get
