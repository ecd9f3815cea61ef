"""One real split-training run, and the delay model's prediction for the same terms.

`train` splits the model at the chosen cut (`toolkit.onnx.split`), writes both peers' config,
runs them over a kernel-shaped link in a private network namespace (`toolkit.train.link`), or
paced in the senders where that is not possible, and sets the median measured terms beside
the predicted ones.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from toolkit.costgraph import CostGraph, crossing_tensors
from toolkit.costs import Scenario, labels_ms, transfer_ms
from toolkit.errors import ToolkitError
from toolkit.onnx import load_external_data, load_model
from toolkit.train.executor import OnnxModule, trainable_initializers
from toolkit.train.peer import PeerConfig, synthetic_inputs

TERMS = ("device_ms", "upload_ms", "server_ms", "download_ms", "total_ms")


class TrainError(ToolkitError):
    """The split training run could not start or a peer failed."""


@dataclass(frozen=True)
class TrainResult:
    model: str
    cut: str  # how the partition was chosen
    device_layers: int
    cut_tensors: list[str]
    batch: int
    shaping: str  # "kernel (tc htb in a private network namespace)" or "paced in the sender"
    iterations: list[dict[str, float]]
    measured_ms: dict[str, float]
    predicted_ms: dict[str, float]
    losses: list[float] = field(default_factory=list)
    device: list[int] = field(default_factory=list)  # the device layers' indices
    predicted_for: str = ""  # the profiles the prediction is for

    def to_dict(self) -> dict[str, Any]:
        ratio = {k: self.measured_ms[k] / self.predicted_ms[k]
                 for k in TERMS if self.predicted_ms.get(k)}
        return {"model": self.model, "cut": self.cut, "device_layers": self.device_layers,
                "cut_tensors": self.cut_tensors, "batch": self.batch, "shaping": self.shaping,
                "measured_ms": self.measured_ms, "predicted_ms": self.predicted_ms,
                "ratio": ratio, "losses": self.losses, "iterations": self.iterations,
                "device": self.device, "predicted_for": self.predicted_for}


def predicted_terms(costs: CostGraph, device: Sequence[int], scenario: Scenario
                    ) -> dict[str, float]:
    """The delay model's terms of one iteration for this partition: each side's compute
    (forward, backward and optimizer step), and each direction's message (bytes terms, its
    one-way latency, and the labels up when the server holds the loss)."""
    on_device = set(device)
    crossing = crossing_tensors(costs, on_device)
    server_holds_output = any(o not in on_device for o in costs.outputs)
    up = sum(transfer_ms(t.bytes, scenario, up=True) for t in crossing)
    down = sum(transfer_ms(t.bytes, scenario, up=False) for t in crossing if t.is_float)
    messages = bool(crossing)
    terms = {
        "device_ms": sum(costs.device_ms[i] for i in on_device),
        "upload_ms": up + (scenario.latency_ms if messages else 0.0)
        + (labels_ms(scenario) if server_holds_output else 0.0),
        "server_ms": sum(costs.server_ms[i] for i in range(len(costs)) if i not in on_device),
        "download_ms": down + (scenario.latency_ms if messages else 0.0),
    }
    terms["total_ms"] = sum(terms.values())
    return terms


def kernel_shaping_available() -> str | None:
    """None when this process can shape a link in a namespace; else why not."""
    if os.geteuid() != 0:
        return "not root"
    missing = [tool for tool in ("unshare", "tc", "ip", "sysctl") if not shutil.which(tool)]
    if missing:
        return f"no {missing[0]} on PATH"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return None if probe.returncode == 0 else "cannot create a network namespace"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def input_specs(model: onnx.ModelProto, batch: int, dims: dict[str, int]
                ) -> dict[str, dict[str, Any]]:
    """Each raw input's shape and dtype for one batch: the file's sizes, a symbolic leading
    dimension set to `batch` and other symbolic ones from `dims` (`--dim NAME=VALUE`)."""
    initializers = {t.name for t in model.graph.initializer}
    specs = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        t = vi.type.tensor_type
        shape = []
        for k, d in enumerate(t.shape.dim):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif k == 0 and d.dim_param not in dims:
                shape.append(batch)
            elif d.dim_param in dims:
                shape.append(dims[d.dim_param])
            else:
                raise TrainError(f"input {vi.name!r} has a symbolic dimension "
                                 f"{d.dim_param or '?'!r}: give it with --dim NAME=VALUE")
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        specs[vi.name] = {"shape": shape, "dtype": dtype}
    return specs


def file_batch(model: onnx.ModelProto) -> int | None:
    """The batch the file fixes (the leading dimension of its first input), if concrete."""
    initializers = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name not in initializers:
            dims = vi.type.tensor_type.shape.dim
            return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None
    return None


def train(
    model_path: Path, name: str, costs: CostGraph, device: Sequence[int], cut_label: str,
    scenario: Scenario, iterations: int = 20, warmup: int = 3, lr: float = 0.001,
    paced: bool = False, dims: dict[str, int] | None = None, timeout_s: float = 1800,
    progress: Callable[[int, int], None] | None = None, device_cpu: float = 1.0,
) -> TrainResult:
    """Split MODEL at `device` (layer indices of `costs`), train it for `iterations` over the
    scenario's link at the scenario's batch, and compare with the prediction. A file that fixes
    its batch trains at that batch, so the scenario must use it (`file_batch`). `progress` is
    called with (iterations done, iterations in all, warm-up included) while it runs."""
    from toolkit.onnx.split import split_model

    whole = load_model(model_path)
    load_external_data(whole, model_path.parent)
    fixed = file_batch(whole)
    if fixed is not None and fixed != scenario.batch:
        raise TrainError(f"{model_path.name} fixes its batch at {fixed}; train it at --batch "
                         f"{fixed} (or export it with a dynamic batch dimension)")
    trainable = sorted(trainable_initializers(whole.graph))
    inputs = input_specs(whole, scenario.batch, dims or {})
    loss_output = whole.graph.output[0].name
    probe = OnnxModule(whole, trainable)
    with torch.no_grad():
        output = probe(synthetic_inputs(inputs, 0))[loss_output]
    del probe
    classes = int(output.shape[-1]) if output.is_floating_point() and output.dim() >= 2 else 0
    label_shape = list(output.shape[:-1] if classes else output.shape)
    batch = scenario.batch
    on_device = set(device)
    all_device = len(on_device) == len(costs)
    if not all_device and not any(o not in on_device for o in costs.outputs):
        raise TrainError("this cut keeps the model's outputs on the device; split training "
                         "here computes the loss on the server")
    why_not = None if paced else kernel_shaping_available()
    shaping = "kernel (tc htb in a private network namespace)" if not (paced or why_not) \
        else f"paced in the sender ({why_not or 'asked for'}; not kernel-shaped)"
    if device_cpu < 1:
        shaping += f"; device limited to {device_cpu:.0%} of a CPU (cgroup cpu quota)"
    with tempfile.TemporaryDirectory(prefix="splitcut-train-") as tmp:
        work = Path(tmp)
        if all_device:
            device_onnx, server_onnx, cut = str(model_path), None, []
        else:
            split = split_model(model_path, [costs.names[i] for i in sorted(on_device)], work,
                                check=False)
            assert split.server_path is not None
            device_onnx, server_onnx, cut = str(split.device_path), str(split.server_path), \
                list(split.cut_tensors)
        config = PeerConfig(
            device_onnx=device_onnx, server_onnx=server_onnx, trainable=trainable, cut=cut,
            loss_output=loss_output, label_shape=label_shape, classes=classes,
            port=_free_port(), results=str(work / "results.json"), iterations=iterations,
            progress=str(work / "progress"), device_cpu=device_cpu,
            warmup=warmup, lr=lr, latency_ms=scenario.latency_ms, inputs=inputs,
            pace_bps={} if why_not is None and not paced
            else {"up": scenario.uplink_bps, "down": scenario.downlink_bps},
        )
        config_path = work / "config.json"
        config.save(config_path)
        runner = [sys.executable, "-m", "toolkit.train.link", str(config_path),
                  str(scenario.uplink_bps), str(scenario.downlink_bps),
                  "paced" if config.pace_bps else "shaped"]
        if not config.pace_bps:
            runner = ["unshare", "--net", "--", *runner]
        code, stderr = _run(runner, timeout_s, work / "progress", warmup + iterations,
                            progress)
        if code:
            lines = [line.removeprefix("splitcut train: ")
                     for line in stderr.splitlines() if line.startswith("splitcut train")]
            raise TrainError("; ".join(lines) if lines else f"a peer failed (exit {code})")
        rows = json.loads((work / "results.json").read_text())
    measured = {
        "device_ms": statistics.median(r["device_forward_ms"] + r["device_backward_ms"]
                                       for r in rows),
        "upload_ms": statistics.median(r.get("upload_ms", 0.0) for r in rows),
        "server_ms": statistics.median(r.get("server_ms", 0.0) for r in rows),
        "download_ms": statistics.median(r.get("download_ms", 0.0) for r in rows),
        "total_ms": statistics.median(r["wall_ms"] for r in rows),
    }
    return TrainResult(name, cut_label, len(on_device), cut, batch, shaping, rows, measured,
                       predicted_terms(costs, device, scenario), [r["loss"] for r in rows],
                       sorted(on_device),
                       f"device {scenario.device.name}, server {scenario.server.name}")


def _run(command: list[str], timeout_s: float, progress_file: Path, steps: int,
         progress: Callable[[int, int], None] | None) -> tuple[int, str]:
    """Run the peers' runner to its end, reporting progress; (exit code, its stderr)."""
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryFile("w+") as err, subprocess.Popen(
            command, stderr=err, stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": _package_root()}) as runner:
        try:
            while runner.poll() is None:
                if time.monotonic() > deadline:
                    raise TrainError(f"the training run took longer than {timeout_s:g} s")
                if progress is not None and progress_file.exists():
                    done = progress_file.read_text()
                    progress(int(done) if done.isdigit() else 0, steps)
                time.sleep(0.1)
        finally:
            if runner.poll() is None:
                runner.kill()  # the peers die with it (PR_SET_PDEATHSIG)
                runner.wait()
        err.seek(0)
        return runner.returncode, err.read()


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


