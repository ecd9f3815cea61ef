"""Fuzzed ONNX input: every command either works or fails with a one-line error, exit code 2.

The normal run feeds a fixed-seed corpus (plus the giant cases: a 100,000-node chain, deeply
nested If subgraphs, an empty and a non-ONNX file) to `inspect`, `graph` and `partition`.
SPLITCUT_FUZZ_LONG=1 runs the long corpus (5,000 cases from each of three seeds) instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LONG = bool(os.environ.get("SPLITCUT_FUZZ_LONG"))
RUNS = [(seed, 5000, seed == 0) for seed in (0, 1, 2)] if LONG else [(0, 400, True)]


@pytest.mark.parametrize(("seed", "count", "giants"), RUNS)
def test_fuzzed_models_end_in_success_or_a_clear_error(tmp_path, seed, count, giants):
    report_path = tmp_path / "report.json"
    command = [sys.executable, "-m", "tests.fuzz", "--seed", str(seed), "--count", str(count),
               "--out", str(report_path)]
    if not giants:
        command.append("--no-giants")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["failures"] == []
    assert not done.stderr.strip(), "onnxruntime or Python printed to stderr: " + done.stderr[-500:]
    outcomes = report["outcomes"]
    # both kinds of outcome occur: the corpus is neither all-broken nor all-harmless
    assert outcomes["ok"] > 0 and outcomes["error"] > 0
    assert sum(outcomes.values()) == report["cases"] * 3
