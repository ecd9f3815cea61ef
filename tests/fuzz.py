"""Corrupted and adversarial ONNX models, and a worker that feeds them to the CLI.

    python -m tests.fuzz --seed 0 --count 1000 --out report.json

The worker runs `inspect`, `graph --json` and `partition --json` in-process on every case,
under an address-space limit and a per-command alarm, and records every outcome that is not
"exit 0" or "exit 2 with a one-line `error:` message": another exit code, an exception that
escaped the CLI, a traceback, a hang, a memory blow-up. Cases are generated from a seed, so a
failure can be replayed by its seed and index.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
from onnx import AttributeProto, TensorProto, helper

from tests.helpers import as_constant_nodes, chain, model, vi, weight

COMMANDS = (("inspect",), ("graph", "--json"), ("partition", "--json"))
SECONDS_PER_COMMAND = 120  # a hang detector, far above any honest run
ADDRESS_SPACE = 8 << 30  # bytes: a blow-up ends in MemoryError instead of swapping the machine


# seeds: small valid models ------------------------------------------------------------------

def _conv_net() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1),
    ]
    inits = [weight("cw", 4, 3, 3, 3), weight("s", 4), weight("b", 4), weight("m", 4),
             weight("v", 4), weight("fw", 10, 64)]
    return model(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", [1, 10])], inits)


def _residual() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["a"], name="fc0"),
        helper.make_node("Relu", ["a"], ["b"], name="act0"),
        helper.make_node("MatMul", ["b", "w1"], ["c"], name="fc1"),
        helper.make_node("Add", ["c", "x"], ["d"], name="add"),
        helper.make_node("Softmax", ["d"], ["y"], name="softmax", axis=-1),
    ]
    return model(nodes, [vi("x", ["N", 8])], [vi("y", ["N", 8])],
                 [weight("w0", 8, 8), weight("w1", 8, 8, seed=1)])


def _with_if() -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node("Relu", ["a"], ["t"], name="then_relu")],
                             "then", [], [vi("t", [1, 8])])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["e"], name="else_neg")],
                              "else", [], [vi("e", [1, 8])])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="fc"),
        helper.make_node("ReduceSum", ["a"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other),
    ]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    return model(nodes, [vi("x", [1, 8])], [vi("y", [1, 8])], [weight("w", 8, 8), zero])


SEEDS: dict[str, Callable[[], onnx.ModelProto]] = {
    "chain": lambda: chain(4), "conv": _conv_net, "residual": _residual, "if": _with_if,
    "constants": lambda: as_constant_nodes(_conv_net()),  # paddle2onnx's way
}


# mutations ----------------------------------------------------------------------------------

Mutation = Callable[[onnx.ModelProto, random.Random], None]
_ABSURD_DIMS = (0, -1, -7, 1 << 31, 1 << 40, (1 << 62) + 1)
_NAMES = ("", " ", "a'b\"c", "`x`", "MATCH (n) DETACH DELETE n", "ü🚀\u202e", "x" * 10_000,
          "../../../etc/passwd", "\x00nul")


def _node(m: onnx.ModelProto, rng: random.Random) -> onnx.NodeProto:
    return m.graph.node[rng.randrange(len(m.graph.node))]


def op_type(m: onnx.ModelProto, rng: random.Random) -> None:
    _node(m, rng).op_type = rng.choice(
        ("NoSuchOp", "", "Conv", "Loop", "Scan", "Reshape", "Gather", "Einsum", "LSTM", "If",
         "MatMul", "Concat", "Split", "Resize", "TopK", "NonZero", "Constant"))


def dangling_input(m: onnx.ModelProto, rng: random.Random) -> None:
    node = _node(m, rng)
    if node.input:
        node.input[rng.randrange(len(node.input))] = f"ghost_{rng.randrange(100)}"
    else:
        node.input.append("ghost")


def cycle(m: onnx.ModelProto, rng: random.Random) -> None:
    nodes = m.graph.node
    i = rng.randrange(len(nodes))
    j = rng.randrange(i, len(nodes))
    if nodes[i].input and nodes[j].output:
        nodes[i].input[0] = nodes[j].output[0]


def duplicate_output(m: onnx.ModelProto, rng: random.Random) -> None:
    a, b = _node(m, rng), _node(m, rng)
    if a.output and b.output:
        a.output[0] = b.output[0]


def absurd_input_dims(m: onnx.ModelProto, rng: random.Random) -> None:
    for value in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if dims and rng.random() < 0.7:
            dims[rng.randrange(len(dims))].dim_value = rng.choice(_ABSURD_DIMS)


def drop_initializer(m: onnx.ModelProto, rng: random.Random) -> None:
    if m.graph.initializer:
        del m.graph.initializer[rng.randrange(len(m.graph.initializer))]


def corrupt_initializer(m: onnx.ModelProto, rng: random.Random) -> None:
    """An initializer's, or a Constant node's, tensor made absurd."""
    tensors = [*m.graph.initializer, *(a.t for n in m.graph.node if n.op_type == "Constant"
                                       for a in n.attribute if a.name == "value")]
    if not tensors:
        return
    t = tensors[rng.randrange(len(tensors))]
    choice = rng.randrange(4)
    if choice == 0:
        t.dims[:] = [rng.choice(_ABSURD_DIMS) for _ in range(rng.randint(0, 4))]
    elif choice == 1:
        t.data_type = rng.choice((0, 8, 16, 99))
    elif choice == 2:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)]
    else:
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", rng.choice(("missing.bin", "../../etc/passwd",
                                                         "/dev/zero"))


def bad_attribute(m: onnx.ModelProto, rng: random.Random) -> None:
    node = _node(m, rng)
    name = rng.choice(("kernel_shape", "strides", "pads", "group", "axis", "perm", "dilations"))
    value = rng.choice(([0], [-1, -1], [1 << 40], 0, -3, 1 << 62, "text", 1.5))
    del node.attribute[:]
    node.attribute.append(helper.make_attribute(name, value))


def opset(m: onnx.ModelProto, rng: random.Random) -> None:
    entry = m.opset_import[0]
    if rng.random() < 0.5:
        entry.version = rng.choice((0, 1, 6, 99, 1 << 40))
    else:
        entry.domain = rng.choice(("com.unknown", "ai.onnx.ml", "x"))
    m.ir_version = rng.choice((0, 3, 8, 99))


def odd_names(m: onnx.ModelProto, rng: random.Random) -> None:
    node = _node(m, rng)
    node.name = rng.choice(_NAMES)
    if rng.random() < 0.5 and node.output:
        old, new = node.output[0], rng.choice(_NAMES)
        for other in m.graph.node:
            other.input[:] = [new if x == old else x for x in other.input]
        for out in m.graph.output:
            if out.name == old:
                out.name = new
        node.output[0] = new


def strip_graph(m: onnx.ModelProto, rng: random.Random) -> None:
    field = rng.choice(("input", "output", "node", "value_info"))
    del getattr(m.graph, field)[:]


def empty_output_name(m: onnx.ModelProto, rng: random.Random) -> None:
    node = _node(m, rng)
    if node.output:
        node.output[0] = ""


MUTATIONS: dict[str, Mutation] = {
    f.__name__: f for f in (op_type, dangling_input, cycle, duplicate_output, absurd_input_dims,
                            drop_initializer, corrupt_initializer, bad_attribute, opset,
                            odd_names, strip_graph, empty_output_name)
}


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def _flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 20)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


# generated giants ---------------------------------------------------------------------------

def long_chain(nodes: int) -> onnx.ModelProto:
    """`nodes` element-wise nodes in one chain (no weights: the size is in the graph)."""
    ops = ("Relu", "Neg", "Abs", "Sigmoid")
    made = [helper.make_node(ops[i % len(ops)], [f"t{i}"], [f"t{i + 1}"], name=f"n{i}")
            for i in range(nodes)]
    return model(made, [vi("t0", [1, 4])], [vi(f"t{nodes}", [1, 4])], check=False)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | str | int) -> bytes:
    """One protobuf field: length-delimited for bytes/str, varint for int."""
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def nested_ifs(depth: int) -> bytes:
    """An If whose then-branch holds an If whose then-branch holds ... `depth` levels, written
    at the wire level: protobuf's own builders refuse to go deeper than about 100."""
    def value_info(name: str, dims: tuple[int, ...], elem: int = TensorProto.FLOAT) -> bytes:
        return vi(name, list(dims), elem).SerializeToString()

    def relu_graph(name: str, out: str) -> bytes:
        node = _field(1, "x") + _field(2, out) + _field(3, name) + _field(4, "Relu")
        return _field(1, node) + _field(2, name) + _field(12, value_info(out, (1, 4)))

    def attribute(name: str, graph: bytes) -> bytes:  # AttributeProto: name, g, type=GRAPH
        return _field(1, name) + _field(6, graph) + _field(20, AttributeProto.GRAPH)

    graph = relu_graph("leaf", "y0")
    for level in range(depth):
        out = f"y{level + 1}"
        node = (_field(1, "cond") + _field(2, out) + _field(3, f"if{level}") + _field(4, "If")
                + _field(5, attribute("then_branch", graph))
                + _field(5, attribute("else_branch", relu_graph(f"else{level}", f"e{level}"))))
        graph = _field(1, node) + _field(2, f"level{level}") + _field(12, value_info(out, (1, 4)))
    top = (graph + _field(11, value_info("x", (1, 4)))
           + _field(11, value_info("cond", (), TensorProto.BOOL)))
    opset = _field(1, "") + _field(2, 17)
    return _field(1, 8) + _field(8, opset) + _field(7, top)


# the corpus ---------------------------------------------------------------------------------

def cases(seed: int, count: int, giants: bool = True) -> Iterator[tuple[str, bytes]]:
    """(label, file bytes) for `count` fuzzed models, then the giant ones."""
    rng = random.Random(seed)
    seeds = {name: make() for name, make in SEEDS.items()}
    raw = {name: m.SerializeToString() for name, m in seeds.items()}
    for i in range(count):
        name = rng.choice(list(seeds))
        kind = rng.random()
        if kind < 0.15:
            yield f"{i}:{name}:truncate", _truncate(raw[name], rng)
        elif kind < 0.3:
            yield f"{i}:{name}:flip", _flip_bytes(raw[name], rng)
        else:
            mutated = onnx.ModelProto()
            mutated.CopyFrom(seeds[name])
            picked = rng.sample(list(MUTATIONS), rng.randint(1, 3))
            picked.sort(key=lambda m: m == "strip_graph")  # the others need nodes
            for mutation in picked:
                MUTATIONS[mutation](mutated, rng)
            yield f"{i}:{name}:{'+'.join(picked)}", mutated.SerializeToString()
    if giants:
        yield "chain-100000", long_chain(100_000).SerializeToString()
        for depth in (30, 200, 2000):
            yield f"nested-if-{depth}", nested_ifs(depth)
        yield "empty-file", b""
        yield "not-onnx", b"\x89PNG\r\n\x1a\n" + bytes(100)


# the worker ---------------------------------------------------------------------------------

class _Alarm(Exception):
    pass


def _on_alarm(*_: Any) -> None:
    raise _Alarm


def run_command(args: list[str]) -> tuple[str, str]:
    """One CLI command in-process: (outcome, detail). Outcome 'ok', 'error' or a failure."""
    from toolkit.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["splitcut", *args]
    signal.alarm(SECONDS_PER_COMMAND)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except _Alarm:
        return "hang", f"no answer in {SECONDS_PER_COMMAND} s"
    except MemoryError:
        return "memory", "MemoryError"
    except BaseException as exc:
        return "exception", f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        signal.alarm(0)
        sys.argv = argv
    err = stderr.getvalue()
    if code == 0:
        return "ok", ""
    lines = err.strip().splitlines()
    if code == 2 and len(lines) == 1 and lines[0].startswith("error: ") \
            and "Traceback" not in err:
        return "error", lines[0][:200]
    return "bad-exit", f"exit {code}: {err[-500:]}"


def run(seed: int, count: int, giants: bool) -> dict[str, Any]:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    signal.signal(signal.SIGALRM, _on_alarm)
    outcomes: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    failures = []
    slowest = (0.0, "")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.onnx"
        done = 0
        for label, data in cases(seed, count, giants):
            done += 1
            path.write_bytes(data)
            for command in COMMANDS:
                begin = time.perf_counter()
                outcome, detail = run_command([*command, str(path)])
                seconds = time.perf_counter() - begin
                slowest = max(slowest, (seconds, f"{label} {command[0]}"))
                outcomes[outcome] += 1
                if outcome == "error":
                    messages[detail.split(":")[1].strip()[:40] if ":" in detail else detail] += 1
                elif outcome != "ok":
                    failures.append({"case": label, "command": command[0], "outcome": outcome,
                                     "detail": detail})
    return {"seed": seed, "cases": done, "outcomes": dict(outcomes),
            "failures": failures, "slowest_s": round(slowest[0], 2), "slowest": slowest[1],
            "seconds": round(time.perf_counter() - start, 1),
            "top_errors": messages.most_common(12)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--no-giants", action="store_true")
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    report = run(opts.seed, opts.count, not opts.no_giants)
    Path(opts.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
