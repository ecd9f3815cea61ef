"""Whole-model figures on the zoo against torchvision's published numbers, and both exporters."""

from __future__ import annotations

import pytest

from toolkit import zoo
from toolkit.onnx import read_onnx

VISION = [m.name for m in zoo.MODELS.values() if m.source == "torchvision"]


@pytest.mark.parametrize("name", VISION)
def test_macs_match_torchvision_published_ops_within_2_percent(zoo_path, name):
    graph = read_onnx(zoo_path(name), name)
    published = zoo.MODELS[name].published_macs()
    assert published is not None
    assert graph.total_macs == pytest.approx(published, rel=0.02)
    assert not graph.unsupported_ops
    assert not graph.unknown_shapes


@pytest.mark.parametrize("name", ["bert_base", "gpt2"])
def test_language_models_macs_match_the_closed_form(zoo_path, name):
    """Per token: 12 layers x (12 d^2 + 2 seq d); GPT-2 adds its lm_head."""
    d, seq, layers, vocab = 768, zoo.SEQUENCE_LENGTH, 12, 50257
    expected = seq * layers * (12 * d * d + 2 * seq * d)
    if name == "gpt2":
        expected += seq * d * vocab
    graph = read_onnx(zoo_path(name), name)
    assert graph.total_macs == pytest.approx(expected, rel=0.001)


@pytest.mark.parametrize("name", ["resnet18", "bert_base"])
def test_both_exporters_agree(zoo_path, name):
    ts = read_onnx(zoo_path(name, "torchscript"), name)
    dy = read_onnx(zoo_path(name, "dynamo"), name)
    assert dy.total_macs == pytest.approx(ts.total_macs, rel=1e-6)
    assert dy.total_params == pytest.approx(ts.total_params, rel=0.001)
    assert {layer.op for layer in ts if layer.macs} == {layer.op for layer in dy if layer.macs}


def test_module_names_survive_both_exporters(zoo_path):
    ts = read_onnx(zoo_path("resnet18", "torchscript"), "r")
    dy = read_onnx(zoo_path("resnet18", "dynamo"), "r")
    ts_modules = {layer.module for layer in ts if layer.op == "Conv"}
    dy_modules = {layer.module for layer in dy if layer.op == "Conv"}
    assert "layer1.0.conv1" in ts_modules
    assert ts_modules == dy_modules
