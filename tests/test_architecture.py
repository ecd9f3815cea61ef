"""The pure core imports no onnx, onnxruntime, torch or neo4j: only the edges do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOLKIT = Path(__file__).resolve().parent.parent / "toolkit"
CORE = ["graph", "ops", "costs", "costgraph", "tiergraph", "blocks", "measured", "profiles",
        "calibrate", "synthetic", "errors"]
EDGES = ("onnx", "onnxruntime", "torch", "neo4j")


def core_modules() -> list[str]:
    partition = sorted(p.stem for p in (TOOLKIT / "partition").glob("*.py")
                       if p.stem != "__init__")
    return [f"toolkit.{m}" for m in CORE] + ["toolkit.partition"] + [
        f"toolkit.partition.{m}" for m in partition]


def test_the_core_imports_none_of_the_edges():
    modules = core_modules()
    assert "toolkit.partition.tiers" in modules and len(modules) > 15
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print(','.join(e for e in {EDGES!r} if e in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=TOOLKIT.parent)
    assert done.stdout.strip() == "", f"the core pulled in {done.stdout.strip()}"


def test_the_check_sees_an_edge_import():
    """The same check on a module of the edge finds what it imports (the check can fail)."""
    code = "import sys\nimport toolkit.onnx\nprint('onnx' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=TOOLKIT.parent)
    assert done.stdout.strip() == "True"


def test_every_subpackage_ships_in_the_wheel():
    """pyproject lists the packages by hand: a new one left out would be missing once built."""
    import tomllib

    listed = set(tomllib.loads((TOOLKIT.parent / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {"toolkit." + ".".join(p.parent.relative_to(TOOLKIT).parts)
             for p in TOOLKIT.rglob("__init__.py") if p.parent != TOOLKIT}
    assert found and found <= listed, sorted(found - listed)
