"""Measured profiles: onnxruntime timing, use instead of the roofline, checks, calibration."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.helpers import chain, run_main, save
from toolkit import api, profiles
from toolkit.calibrate import estimates, fit, to_toml
from toolkit.costs import build_cost_graph, step_ms
from toolkit.measure import measure, onnxruntime_forward
from toolkit.measured import layers_sha, load_profile
from toolkit.onnx import read_onnx


def test_onnxruntime_times_every_layer(tmp_path):
    path = save(chain(5, width=128), tmp_path / "c.onnx")
    graph = read_onnx(path)
    times = onnxruntime_forward(path, graph, runs=3)
    assert set(times) == set(graph.layers)
    assert all(t >= 0 for t in times.values())
    assert sum(times.values()) > 0


def test_onnxruntime_times_layers_the_file_does_not_name(tmp_path):
    """onnxruntime's profiler names a node as the file does, or as its own inlining of a
    function does: a function's layers (`b1.MatMul`) were timed 0 ms (a TorchScript export
    with `export_modules_as_functions` came out with 3 of 48 layers timed), and a file that
    repeats a name (`mm`, `mm#1`) it refused. Every layer is timed now, an unnamed node's
    (`MatMul_0`) as before, its weights read from external data as the file keeps them."""
    import onnx

    from tests.helpers import with_local_function

    m = chain(3, width=256)
    m.graph.node[0].name = ""
    m.graph.node[2].name = m.graph.node[4].name = "mm"
    onnx.save(m, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data",
              size_threshold=0)
    called = with_local_function()
    called.graph.node[1].name = ""
    paths = [tmp_path / "m.onnx", save(called, tmp_path / "f.onnx")]
    for path, names in zip(paths, [{"MatMul_0", "mm", "mm#1"},
                                   {"b1.MatMul", "Block.MatMul"}], strict=True):
        graph = read_onnx(path)
        assert names <= set(graph.layers)
        runs: list[dict[str, float]] = [onnxruntime_forward(path, graph, runs=3)
                                        for _ in range(3)]
        timed = {name for times in runs for name, ms in times.items() if ms > 0}
        assert timed == set(graph.layers), set(graph.layers) - timed


def test_measured_profile_replaces_the_roofline_on_its_processor(tmp_path):
    path = save(chain(4, width=64), tmp_path / "c.onnx")
    graph = read_onnx(path)
    profile = dataclasses.replace(measure(path, graph, "jetson-nano"),
                                  forward_ms={n: 1.0 for n in graph.layers}, backward_ms={})
    file = tmp_path / "p.json"
    file.write_text(json.dumps(profile.to_dict()))
    scenario = api.make_scenario(batch=8, measured=[str(file)])
    costs = build_cost_graph(graph, scenario)
    for i, layer in enumerate(graph):
        backward = 2.0 if layer.trainable else 1.0
        step = step_ms(layer, scenario.device, scenario.optimizer)  # not measured: roofline
        assert (step > 0) == layer.trainable
        assert costs.device_ms[i] == pytest.approx((1.0 + backward) * 8 + step)
    plain = build_cost_graph(graph, api.make_scenario(batch=8))
    assert costs.server_ms == plain.server_ms


def test_profile_for_another_model_is_refused(tmp_path, capsys, monkeypatch):
    small = save(chain(2), tmp_path / "small.onnx")
    big = save(chain(5), tmp_path / "big.onnx")
    code, _, _ = run_main(["profile", str(small), "-o", str(tmp_path / "p.json"),
                           "--processor", "jetson-nano"], capsys, monkeypatch)
    assert code == 0
    assert load_profile(tmp_path / "p.json").layers_sha == layers_sha(read_onnx(small))
    code, _, err = run_main(["partition", str(big), "--measured", str(tmp_path / "p.json")],
                            capsys, monkeypatch)
    assert code == 2
    assert "made for model 'small'" in err


@pytest.mark.parametrize(("text", "fragment"), [
    ('{"layers": {}, "model": "c"}', "it lacks 'batch'"),
    ("[1, 2]", "not a measured profile (TypeError"),
    ("{", "not a measured profile (JSONDecodeError"),
    ('{"layers": {"a": {"forward_ms": NaN}}, "batch": 1, "model": "c", "processor": "x", '
     '"layers_sha256": ""}', "not a measured profile (ValueError"),
])
def test_a_malformed_measured_profile_is_one_line_that_says_why(tmp_path, capsys, monkeypatch,
                                                                 text, fragment):
    path = save(chain(2), tmp_path / "c.onnx")
    (tmp_path / "p.json").write_text(text)
    code, _, err = run_main(["partition", str(path), "--measured", str(tmp_path / "p.json")],
                            capsys, monkeypatch)
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_profile_for_a_processor_outside_the_scenario_is_refused(tmp_path, capsys, monkeypatch):
    small = save(chain(2), tmp_path / "small.onnx")
    run_main(["profile", str(small), "-o", str(tmp_path / "p.json")], capsys, monkeypatch)
    code, _, err = run_main(["graph", str(small), "--measured", str(tmp_path / "p.json")],
                            capsys, monkeypatch)
    assert code == 2
    assert "'this-machine'" in err


def test_calibration_recovers_known_efficiencies(zoo_path, tmp_path):
    """Oracle: 'measurements' made by the roofline itself with known settings are fitted back."""
    base = profiles.processor("cpu-server")
    truth = dataclasses.replace(base, matmul_efficiency=0.08, conv_efficiency=0.05,
                                vector_efficiency=0.004, layer_overhead_us=12.0)
    samples = []
    for name in ("resnet18", "mobilenet_v2", "bert_base"):
        graph = read_onnx(zoo_path(name), name)
        samples.append((graph, dict(zip(graph.layers, estimates(truth, graph), strict=True))))
    fitted = fit(base, samples, "fitted")
    for graph, times in samples:
        assert estimates(fitted, graph).sum() == pytest.approx(sum(times.values()), rel=0.05)
    (tmp_path / "fitted.toml").write_text(to_toml(fitted))
    assert profiles.processor(str(tmp_path / "fitted.toml")) == fitted
    assert fitted.sources["matmul_efficiency"].startswith("fitted by splitcut")


def test_a_model_with_a_symbolic_dimension_is_profiled_and_calibrated_at_its_dim(
        tmp_path, capsys, monkeypatch):
    """`profile --dim` times the model at the value it gives (a reshape to 16 x 32 fails at
    any other), and calibrating reads the model again with the values the profile kept."""
    from onnx import TensorProto, helper

    from tests.helpers import model, vi, weight

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [16, 32])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Reshape", ["h", "shape"], ["r"], name="reshape"),
             helper.make_node("Relu", ["r"], ["y"], name="relu")]
    path = save(model(nodes, [vi("x", [1, "seq", 32])], [vi("y", [16, 32])],
                      [weight("w", 32, 32), shape]), tmp_path / "seq.onnx")
    out = tmp_path / "p.json"
    code, _, err = run_main(["profile", str(path), "-o", str(out)], capsys, monkeypatch)
    assert code == 2 and "--dim seq=128" in err
    code, _, err = run_main(["profile", str(path), "--dim", "seq=16", "-o", str(out),
                             "--processor", "jetson-nano"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out.read_text())["dims"] == {"seq": 16}
    assert load_profile(out).dims == {"seq": 16}
    code, _, err = run_main(["profile", "--calibrate", str(out), "--processor", "laptop",
                             "-o", str(tmp_path / "laptop.toml")], capsys, monkeypatch)
    assert code == 0, err
    # its times are the model's at seq=16, and at no other length
    code, _, err = run_main(["partition", str(path), "--dim", "seq=16", "--measured", str(out)],
                            capsys, monkeypatch)
    assert code == 0, err
    wider = save(model([nodes[0], helper.make_node("Relu", ["h"], ["y"], name="relu")],
                       [vi("x", [1, "seq", 32])], [vi("y", [1, "seq", 32])],
                       [weight("w", 32, 32)]), tmp_path / "wide.onnx")
    code, _, err = run_main(["profile", str(wider), "--dim", "seq=16", "-o", str(out),
                             "--processor", "jetson-nano"], capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_main(["partition", str(wider), "--dim", "seq=64", "--measured", str(out)],
                            capsys, monkeypatch)
    assert code == 2 and "at other input sizes (--dim seq=16)" in err


def test_calibration_writes_the_measured_machine_and_roles_are_checked(tmp_path, capsys,
                                                                        monkeypatch):
    from toolkit.measured import this_machine

    small = save(chain(3), tmp_path / "small.onnx")
    code, _, err = run_main(["profile", str(small), "-o", str(tmp_path / "p.json")], capsys,
                            monkeypatch)
    assert code == 0, err
    machine = this_machine()
    assert json.loads((tmp_path / "p.json").read_text())["machine"] == machine
    code, _, err = run_main(["profile", "--calibrate", str(tmp_path / "p.json"), "--processor",
                             "laptop", "-o", str(tmp_path / "laptop.toml")], capsys,
                            monkeypatch)
    assert code == 0, err
    fitted = profiles.processor(str(tmp_path / "laptop.toml"))
    assert fitted.kind == "device" and fitted.name == "laptop"
    assert fitted.description.startswith(machine) and "Gold 6248" not in fitted.description
    assert fitted.memory_gb is None  # not the example server's 192 GB
    code, _, err = run_main(["partition", str(small), "--device", "h100", "--server",
                             str(tmp_path / "laptop.toml")], capsys, monkeypatch)
    assert code == 0
    assert "h100 is a server profile, used here as the --device" in err
    assert "laptop is a device profile, used here as the --server" in err
    code, _, err = run_main(["partition", str(small)], capsys, monkeypatch)
    assert "warning" not in err


def test_the_executor_times_forward_and_backward_of_any_file(tmp_path, capsys, monkeypatch):
    """`profile --executor`: every layer of a file that is no zoo model timed forward and
    backward in the executor `splitcut train` runs (onnxruntime alone gives forward only, and
    the backward then comes from the roofline); `--measured` charges both as measured."""
    path = save(chain(4, width=64), tmp_path / "c.onnx")
    out = tmp_path / "p.json"
    code, text, err = run_main(["profile", str(path), "--executor", "--processor",
                                "jetson-nano", "-o", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert "backward" in text and "training executor" in text
    graph = read_onnx(path)
    profile = load_profile(out)
    assert profile.layers_sha == layers_sha(graph) and profile.machine
    assert set(profile.forward_ms) == set(graph.layers) == set(profile.backward_ms)
    assert all(profile.backward_ms[layer.name] > 0 for layer in graph if layer.trainable)
    scenario = api.make_scenario(batch=8, measured=[str(out)])
    costs = build_cost_graph(graph, scenario)
    for i, layer in enumerate(graph):
        measured = profile.forward_ms[layer.name] + profile.backward_ms[layer.name]
        step = step_ms(layer, scenario.device, scenario.optimizer)
        assert costs.device_ms[i] == pytest.approx(measured * 8 + step)
    code, _, err = run_main(["profile", str(path), "--executor", "--no-torch", "-o", str(out)],
                            capsys, monkeypatch)
    assert code == 2 and "drop --no-torch" in err
