from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from toolkit import zoo


@pytest.fixture(scope="session")
def zoo_path():
    """Export (once, cached) a zoo model and return its ONNX path."""

    def get(name: str, exporter: str = "torchscript") -> Path:
        return zoo.export(name, exporter=exporter)

    return get


settings.register_profile("default", deadline=None)
settings.load_profile("default")
