"""`splitcut partition`'s phases against the read floor, one model per fresh process.

`python -m bench.readfloor floor|partition PATH REPEATS` prints one JSON line: the best of
REPEATS runs in seconds (per phase for `partition`) and the process's peak resident memory.
The floor is what any reader must do: parse the file (`onnx.load`), infer its shapes (on the
model without its large weights, as the reader does) and walk every node once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import onnx

from bench.endtoend import phases_ms
from toolkit import api
from toolkit.onnx.load import drop_big_weights
from toolkit.onnx.shapes import infer_shapes


def floor_s(path: Path) -> tuple[float, int]:
    """Seconds the floor takes, and the model's node count."""
    start = time.perf_counter()
    model = onnx.load(str(path), load_external_data=False)
    drop_big_weights(model)
    model = infer_shapes(model)
    walked = 0
    for node in model.graph.node:
        walked += len(node.op_type) + len(node.name) + len(node.input) + len(node.output)
    assert walked > 0
    return time.perf_counter() - start, len(model.graph.node)


def _peak_mb() -> float:
    """This process's resident peak (VmHWM: unlike ru_maxrss, not inherited from the parent
    that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3
    return float("nan")


def main() -> None:
    what, path, repeats = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if what == "floor":
        floors = [floor_s(path) for _ in range(repeats)]
        result: dict[str, object] = {"floor": min(s for s, _ in floors), "nodes": floors[0][1]}
    else:
        scenario = api.make_scenario()
        runs = [phases_ms(path, path.stem, scenario) for _ in range(repeats)]
        result = {k: min(r[k] for r in runs) / 1e3 for k in runs[0]}
    result["peak_mb"] = _peak_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
