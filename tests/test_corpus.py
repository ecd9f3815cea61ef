"""Every model of the onnx package's own backend node tests (one per operator case, about
1,900) through read, partition, blocks and split: each either works or ends in a ToolkitError
(one line at the CLI), never in another exception."""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from typing import Any

import onnx
import pytest

from toolkit import api
from toolkit.blocks import find_blocks
from toolkit.errors import ToolkitError


def node_test_cases() -> list[Any]:
    """The onnx package's backend node test cases (model, inputs, expected outputs)."""
    with warnings.catch_warnings():  # a few cases divide by zero on purpose
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        return list(collect_testcases(None))


def node_test_models() -> list[tuple[str, onnx.ModelProto]]:
    return [(case.name, case.model) for case in node_test_cases()]


def test_backend_node_test_corpus_never_crashes(tmp_path, caplog):
    caplog.set_level(logging.CRITICAL)
    cases = node_test_models()
    assert len(cases) > 1000
    scenario = api.make_scenario()
    outcome: Counter[str] = Counter()
    crashes = []
    for i, (name, model) in enumerate(cases):
        path = tmp_path / f"{i}.onnx"
        onnx.save(model, str(path))
        step = "read"
        try:
            graph = api.load_graph(str(path), name)
            step = "partition"
            result = api.partition_model(graph, scenario)
            step = "blocks"
            find_blocks(graph)
            step = "split"
            halves = api.split_halves(str(path), result, str(tmp_path / f"h{i}"))
            outcome["verified" if halves.not_verified is None else "not verified"] += 1
        except ToolkitError:
            outcome[f"refused at {step}"] += 1
        except Exception as exc:  # the thing this test exists to catch
            crashes.append(f"{name} at {step}: {type(exc).__name__}: {exc}"[:300])
    print(dict(outcome))
    assert not crashes, crashes[:10]
    assert outcome["verified"] > len(cases) // 2


@pytest.mark.parametrize("name", ["test_qlinearconv", "test_lstm_defaults",
                                  "test_resize_upsample_scales_cubic"])
def test_corpus_models_through_the_cli_are_clean(tmp_path, capsys, monkeypatch, name):
    from tests.helpers import run_main

    model = dict(node_test_models())[name]
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    for command in (["inspect"], ["partition"], ["blocks"], ["split", "-o", str(tmp_path / "o")]):
        code, _, err = run_main([*command[:1], str(path), *command[1:]], capsys, monkeypatch)
        assert code in (0, 2) and "Traceback" not in err
        assert len(err.strip().splitlines()) <= 1
