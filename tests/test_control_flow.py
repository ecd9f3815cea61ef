"""Control flow (If, Loop, Scan) as one layer: its cost against the same body read flat, its
outer-scope weights counted, a note wherever the file leaves the cost open; and the executor
runs it as onnxruntime does, training the weights its bodies read.

Each model here runs in onnxruntime first, so every body is a valid ONNX program."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from tests.helpers import model, vi, weight
from toolkit.onnx import read_model
from toolkit.train.executor import OnnxModule, trainable_initializers

WIDTH = 8


def _runs(m: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _flat(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
          outputs: list[onnx.ValueInfoProto], inits: list[onnx.TensorProto]) -> tuple[float, float]:
    """FLOPs and MACs of `nodes` read as a plain graph: the oracle for one run of a body."""
    graph = read_model(model(nodes, inputs, outputs, inits), "flat")
    return (sum(layer.flops for layer in graph.layers.values()),
            sum(layer.macs for layer in graph.layers.values()))


def _mlp_body(tag: str) -> list[onnx.NodeProto]:
    return [helper.make_node("MatMul", ["h", "w"], [f"m{tag}"], name=f"mm{tag}"),
            helper.make_node("Relu", [f"m{tag}"], [f"r{tag}"], name=f"relu{tag}")]


def _loop_body(condition: list[onnx.NodeProto]) -> onnx.GraphProto:
    """One step h <- relu(h @ w), `w` read from the enclosing graph."""
    nodes = [helper.make_node("MatMul", ["h_in", "w"], ["m"], name="mm"),
             helper.make_node("Relu", ["m"], ["h_out"], name="relu"), *condition]
    return helper.make_graph(
        nodes, "body", [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL),
                        vi("h_in", [1, WIDTH])],
        [vi("cond_out", [], TensorProto.BOOL), vi("h_out", [1, WIDTH])])


def _loop_model(trips: int | None, condition: list[onnx.NodeProto],
                extra: tuple[onnx.TensorProto, ...] = ()) -> onnx.ModelProto:
    true = helper.make_tensor("true", TensorProto.BOOL, [], [True])
    inits = [weight("w", WIDTH, WIDTH), true, *extra]
    loop_inputs = ["", "true", "x"]
    if trips is not None:
        inits.append(helper.make_tensor("trips", TensorProto.INT64, [], [trips]))
        loop_inputs[0] = "trips"
    nodes = [helper.make_node("Loop", loop_inputs, ["y"], name="loop",
                              body=_loop_body(condition))]
    return model(nodes, [vi("x", [1, WIDTH])], [vi("y", [1, WIDTH])], inits)


def test_a_for_loop_costs_its_body_times_the_trip_count_and_owns_the_weights_it_reads():
    m = _loop_model(5, [helper.make_node("Identity", ["cond_in"], ["cond_out"])])
    x = np.ones((1, WIDTH), np.float32)
    w = onnx.numpy_helper.to_array(m.graph.initializer[0])
    expected = x
    for _ in range(5):
        expected = np.maximum(expected @ w, 0)
    np.testing.assert_allclose(_runs(m, x=x)[0], expected, rtol=1e-5)

    graph = read_model(m, "loop")
    flops, macs = _flat(_mlp_body(""), [vi("h", [1, WIDTH])], [vi("r", [1, WIDTH])],
                        [weight("w", WIDTH, WIDTH)])
    loop = graph.layers["loop"]
    assert (loop.flops, loop.macs) == (5 * flops, 5 * macs)
    assert loop.params == WIDTH * WIDTH and graph.total_params == WIDTH * WIDTH
    assert loop.supported and not any("Loop" in n for n in graph.notes)


def test_a_while_loop_is_costed_once_and_says_so():
    # the body computes its condition from the data: the trip count is not in the file
    condition = [helper.make_node("ReduceSum", ["h_out"], ["s"], keepdims=0),
                 helper.make_node("Less", ["s", "limit"], ["cond_out"])]
    m = _loop_model(100, condition, (helper.make_tensor("limit", TensorProto.FLOAT, [], [1e3]),))
    _runs(m, x=np.ones((1, WIDTH), np.float32))
    graph = read_model(m, "while")
    loop = graph.layers["loop"]
    once, _ = _flat(_mlp_body(""), [vi("h", [1, WIDTH])], [vi("r", [1, WIDTH])],
                    [weight("w", WIDTH, WIDTH)])
    assert once < loop.flops < 2 * once  # one run of the body (with its condition), not 100
    assert any("1 loop (Loop or Scan) costed as one run of the body" in n
               for n in graph.notes)


def _if_model() -> onnx.ModelProto:
    """An If whose then branch runs a 3-step Loop over `w` (reading x from the If's scope),
    its else branch a Neg."""
    then_body = helper.make_graph(
        [helper.make_node("Loop", ["three", "true", "x"], ["t"], name="inner",
                          body=_loop_body([helper.make_node("Identity", ["cond_in"],
                                                            ["cond_out"])]))],
        "then", [], [vi("t", [1, WIDTH])])
    else_body = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                  [vi("e", [1, WIDTH])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Greater", ["s", "zero"], ["c"], name="positive"),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_body,
                              else_branch=else_body)]
    inits = [weight("w", WIDTH, WIDTH), helper.make_tensor("true", TensorProto.BOOL, [], [True]),
             helper.make_tensor("three", TensorProto.INT64, [], [3]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    return model(nodes, [vi("x", [1, WIDTH])], [vi("y", [1, WIDTH])], inits)


def test_if_costs_its_costlier_branch_and_a_loop_nested_in_it_is_counted():
    m = _if_model()
    _runs(m, x=np.ones((1, WIDTH), np.float32))
    _runs(m, x=-np.ones((1, WIDTH), np.float32))

    graph = read_model(m, "if")
    flops, macs = _flat(_mlp_body(""), [vi("h", [1, WIDTH])], [vi("r", [1, WIDTH])],
                        [weight("w", WIDTH, WIDTH)])
    branch = graph.layers["branch"]
    assert (branch.flops, branch.macs) == (3 * flops, 3 * macs)  # the loop, not the Neg
    assert branch.params == WIDTH * WIDTH
    assert set(branch.inputs) == {"c", "x"}
    assert any("1 If node costed as the costlier branch" in n for n in graph.notes)


STEPS = 6


def _scan_model(backwards: bool = False) -> onnx.ModelProto:
    """A running sum over axis 1 of xs (read backwards if asked), each step's sum times `v`."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"]),
         helper.make_node("Mul", ["s_out", "v"], ["y_t"])],
        "scan_body", [vi("s_in", [1, WIDTH]), vi("x_t", [1, WIDTH])],
        [vi("s_out", [1, WIDTH]), vi("y_t", [1, WIDTH])])
    nodes = [helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], name="scan", body=body,
                              num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1],
                              scan_input_directions=[int(backwards)])]
    return model(nodes, [vi("s0", [1, WIDTH]), vi("xs", [1, STEPS, WIDTH])],
                 [vi("s", [1, WIDTH]), vi("ys", [1, STEPS, WIDTH])], [weight("v", WIDTH)])


def test_a_scan_costs_its_body_once_per_slice_of_the_scanned_axis():
    steps, m = STEPS, _scan_model()
    xs = np.arange(steps * WIDTH, dtype=np.float32).reshape(1, steps, WIDTH)
    final, _ = _runs(m, s0=np.zeros((1, WIDTH), np.float32), xs=xs)
    np.testing.assert_allclose(final, xs.sum(axis=1))

    graph = read_model(m, "scan")
    flat = [helper.make_node("Add", ["a", "b"], ["c"], name="add"),
            helper.make_node("Mul", ["c", "v"], ["d"], name="mul")]
    once, _ = _flat(flat, [vi("a", [1, WIDTH]), vi("b", [1, WIDTH])], [vi("d", [1, WIDTH])],
                    [weight("v", WIDTH)])
    assert graph.layers["scan"].flops == steps * once
    assert graph.layers["scan"].params == WIDTH


def test_a_trip_count_written_as_a_constant_node_attribute_is_read():
    m = _loop_model(None, [helper.make_node("Identity", ["cond_in"], ["cond_out"])])
    m.graph.node.insert(0, helper.make_node("Constant", [], ["trips"], value_int=3))
    m.graph.node[1].input[0] = "trips"
    _runs(m, x=np.ones((1, WIDTH), np.float32))
    graph = read_model(m, "loop")
    once, _ = _flat(_mlp_body(""), [vi("h", [1, WIDTH])], [vi("r", [1, WIDTH])],
                    [weight("w", WIDTH, WIDTH)])
    assert graph.layers["loop"].flops == 3 * once
    assert not any("Loop" in n for n in graph.notes)


def _while_model() -> onnx.ModelProto:
    condition = [helper.make_node("ReduceSum", ["h_out"], ["s"], keepdims=0),
                 helper.make_node("Less", ["s", "limit"], ["cond_out"])]
    limit = helper.make_tensor("limit", TensorProto.FLOAT, [], [50.0])
    m = _loop_model(100, condition, (limit,))
    w = np.abs(onnx.numpy_helper.to_array(m.graph.initializer[0]))  # grows until the limit
    m.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "w"))
    return m


@pytest.mark.parametrize("make", [
    lambda: _loop_model(5, [helper.make_node("Identity", ["cond_in"], ["cond_out"])]),
    _while_model, _if_model, _scan_model, lambda: _scan_model(backwards=True)],
    ids=["for", "while", "if-with-loop", "scan", "scan-backwards"])
def test_the_executor_runs_control_flow_as_onnxruntime_and_trains_what_bodies_read(make):
    m = make()
    rng = np.random.default_rng(1)
    feeds = {i.name: np.abs(rng.standard_normal(
        [d.dim_value for d in i.type.tensor_type.shape.dim])).astype(np.float32) / 4
        for i in m.graph.input}
    trainable = trainable_initializers(m.graph)
    [body_weight] = {"w", "v"} & trainable  # read inside a body only
    module = OnnxModule(m, trainable)
    got = module({k: torch.from_numpy(v) for k, v in feeds.items()})
    for name, want in zip([o.name for o in m.graph.output], _runs(m, **feeds), strict=True):
        np.testing.assert_allclose(got[name].detach().numpy(), want, rtol=1e-5, atol=1e-6)
    sum(t.sum() for t in got.values()).backward()
    grad = module.named_weights()[body_weight].grad
    assert grad is not None and grad.abs().sum() > 0
