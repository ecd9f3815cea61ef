"""One real split-training run over a tier chain, and the delay model's prediction for it.

`train` writes one ONNX file per tier (`toolkit.onnx.split.split_tiers`), the peers' config,
runs one process per tier over kernel-shaped links in a private network namespace
(`toolkit.train.link`), or paced in the senders where that is not possible, and sets the
median measured terms beside the predicted ones. Two tiers are device and server; a U-shape
runs device head, server and device tail; device -> edge -> cloud runs three.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from toolkit.costs import Scenario, transfer_ms
from toolkit.errors import ToolkitError
from toolkit.graph import LayerGraph
from toolkit.memory import carrying_grad
from toolkit.onnx import load_external_data, load_model
from toolkit.onnx.shapes import dim_name, given_dim
from toolkit.partition.tiers import file_stems
from toolkit.tiergraph import TierGraph, check_tiers, crossed
from toolkit.train.executor import OnnxModule, trainable_initializers
from toolkit.train.peer import (
    LABELS,
    CpuShare,
    Link,
    PeerConfig,
    TierPeer,
    label_kind,
    score_kind,
    synthetic_inputs,
)


class TrainError(ToolkitError):
    """The split training run could not start or a peer failed."""


def term_keys(stems: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The measured and predicted terms' names: each tier's compute (`device_ms`, `edge_ms`,
    `device_tail_ms`), each boundary's message up and down; two tiers keep their classic
    names (`upload_ms`, `download_ms`)."""
    keys = [_key(stem) for stem in stems]
    tiers = [f"{key}_ms" for key in keys]
    if len(stems) == 2:
        return tiers, [("upload_ms", "download_ms")]
    return tiers, [(f"{a}_to_{b}_ms", f"{b}_to_{a}_ms") for a, b in itertools.pairwise(keys)]


def _key(stem: str) -> str:
    return stem.replace("-", "_")


@dataclass(frozen=True)
class TrainResult:
    model: str
    cut: str  # how the partition was chosen
    tiers: list[str]  # the chain's file stems ("device", "server"; "device-head", ...)
    tier: list[int]  # each layer's tier
    crossing: list[list[str]]  # per boundary, the tensors that crossed it (labels as LABELS)
    batch: int
    shaping: str  # "kernel (tc htb in a private network namespace)" or "paced in the sender"
    iterations: list[dict[str, float]]
    measured_ms: dict[str, float]
    predicted_ms: dict[str, float]
    losses: list[float | None] = field(default_factory=list)  # None: not a number
    predicted_for: str = ""  # the profiles the prediction is for
    runs_on: list[str] = field(default_factory=list)  # each tier's torch device ("cpu")

    @property
    def device(self) -> list[int]:
        """The first tier's layers."""
        return [i for i, t in enumerate(self.tier) if t == 0]

    @property
    def device_layers(self) -> int:
        return len(self.device)

    @property
    def cut_tensors(self) -> list[str]:
        """What crosses the first boundary, the labels left out."""
        return [x for x in self.crossing[0] if x != LABELS] if self.crossing else []

    def to_dict(self) -> dict[str, Any]:
        ratio = {k: self.measured_ms[k] / self.predicted_ms[k]
                 for k in self.measured_ms if self.predicted_ms.get(k)}
        tier_keys, boundary_keys = term_keys(self.tiers)
        return {"model": self.model, "cut": self.cut, "device_layers": self.device_layers,
                "cut_tensors": self.cut_tensors, "batch": self.batch, "shaping": self.shaping,
                "tiers": [{"name": stem, "layers": self.tier.count(t), "term": key,
                           "runs_on": self.runs_on[t] if t < len(self.runs_on) else "cpu"}
                          for t, (stem, key) in enumerate(zip(self.tiers, tier_keys, strict=True))],
                "boundaries": [{"from": self.tiers[b], "to": self.tiers[b + 1],
                                "tensors": [x for x in names if x != LABELS],
                                "labels": LABELS in names, "up_term": up, "down_term": down}
                               for b, (names, (up, down)) in enumerate(
                                   zip(self.crossing, boundary_keys, strict=False))],
                "measured_ms": self.measured_ms, "predicted_ms": self.predicted_ms,
                "ratio": ratio, "losses": self.losses, "iterations": self.iterations,
                "device": self.device, "predicted_for": self.predicted_for}


def predicted_terms(graph: TierGraph, tier: Sequence[int], boundaries: Sequence[Scenario],
                    stems: Sequence[str]) -> dict[str, float]:
    """The delay model's terms of one iteration for this tiering: each tier's compute
    (forward, backward and optimizer step), and each boundary's message each way (its bytes
    terms and one-way latency, and the labels up where the loss lies beyond it). They add up
    to the objective `tier_delay` minimises."""
    tiers = np.asarray(tier, dtype=np.int64)
    delay = check_tiers(graph, tiers)
    flags = crossed(graph, tiers)
    tier_keys, boundary_keys = term_keys(stems)
    terms = dict(zip(tier_keys, delay.compute, strict=True))
    for b, (scenario, (up_key, down_key)) in enumerate(zip(boundaries, boundary_keys,
                                                              strict=True)):
        across = [graph.base.tensors[x] for x in np.flatnonzero(flags[:, b])]
        one_way = scenario.latency_ms if across else 0.0
        terms[up_key] = sum(transfer_ms(x.bytes, scenario, True, x.per_sample)
                            for x in across) + one_way + delay.labels[b]
        terms[down_key] = sum(transfer_ms(x.bytes, scenario, False, x.per_sample)
                              for x in across if x.is_float) + one_way
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
            value = given_dim(d, vi.name, k, dims)
            if value is None and k > 0:
                raise TrainError(f"input {vi.name!r} has a symbolic dimension "
                                 f"{dim_name(d, vi.name, k)!r}: give it with --dim NAME=VALUE")
            shape.append(batch if value is None else value)
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        specs[vi.name] = {"shape": shape, "dtype": dtype}
    return specs


def loss_output(graph: LayerGraph) -> str:
    """The model output a training step computes its loss on: the first that gradients flow
    back from (a file may list the raw input, a mask or a class index first); a `TrainError`
    if none does, as then the step has nothing to train."""
    differentiable = carrying_grad(graph)
    found = next((out for out in graph.outputs if out in differentiable), None)
    if found is None:
        listed = ", ".join(graph.outputs[:3]) + (", ..." if len(graph.outputs) > 3 else "")
        raise TrainError(f"nothing to train in {graph.name}: no model output ({listed}) is "
                         "computed from a trainable weight by operators gradients pass "
                         "through, so a loss on it changes no weight")
    return found


def train(
    model_path: Path, name: str, graph: TierGraph, tier: Sequence[int], cut_label: str,
    boundaries: Sequence[Scenario], loss_output: str, iterations: int = 20, warmup: int = 3,
    lr: float = 0.001, paced: bool = False, dims: dict[str, int] | None = None,
    fixed: int | None = None,
    timeout_s: float = 1800,
    progress: Callable[[int, int], None] | None = None, cpu: Mapping[str, float] | None = None,
    devices: Mapping[str, str] | None = None,
) -> TrainResult:
    """Split MODEL along the chain at `tier` (each layer's tier in `graph`), train it for
    `iterations` over each boundary's link at the scenario's batch, and compare with the
    prediction. A file that fixes its batch (`fixed`: `LayerGraph.file_batch`) trains at that
    batch, so the scenario must use it. `progress` is called with (iterations done, iterations
    in all, warm-up included) while it runs. The loss is computed on model output
    `loss_output`. `cpu` gives tiers (by name) a share of one CPU: a
    slower processor, emulated by a cgroup quota that a name's tiers share (a U-shape's
    device). `devices` runs tiers (by name) on a torch device: `{"server": "cuda"}` trains the
    server's part on this machine's GPU."""
    from toolkit.onnx.split import split_tiers

    last = max(tier, default=0)
    shares = {name: share for name, share in (cpu or {}).items() if share < 1}
    devices = devices or {}
    for asked, what in ((shares, "to slow down"), (devices, "to run on a device")):
        unknown = [name for name in asked if name not in graph.tiers]
        if unknown:
            raise TrainError(f"no tier named {unknown[0]!r} {what}; the chain has "
                             + ", ".join(dict.fromkeys(graph.tiers)))
    runs_on = [_torch_device(name, devices.get(name, "cpu")) for name in graph.tiers]
    predicted = predicted_terms(graph, tier, boundaries, file_stems(graph.tiers))
    batch = boundaries[0].batch
    whole = load_model(model_path)
    load_external_data(whole, model_path.parent)
    if fixed is not None and fixed != batch:
        raise TrainError(f"{model_path.name} fixes its batch at {fixed}; train it at --batch "
                         f"{fixed} (or export it with a dynamic batch dimension)")
    trainable = sorted(trainable_initializers(whole.graph))
    inputs = input_specs(whole, batch, dims or {})
    probe = OnnxModule(whole, trainable)
    with torch.no_grad():
        output = probe(synthetic_inputs(inputs, 0))[loss_output]
    del probe
    classes, label_shape = label_kind(output)
    scores = score_kind(output, classes)
    stems = file_stems(graph.tiers)
    why_not = None if paced else kernel_shaping_available()
    shaping = "kernel (tc htb in a private network namespace)" if not (paced or why_not) \
        else f"paced in the sender ({why_not or 'asked for'}; not kernel-shaped)"
    if shares:
        shaping += "; " + ", ".join(f"{name} limited to {share:.0%}" for name, share in
                                    shares.items()) + " of a CPU (cgroup cpu quota)"
    with tempfile.TemporaryDirectory(prefix="splitcut-train-") as tmp:
        work = Path(tmp)
        if last == 0:
            files: list[str | None] = [str(model_path)]
            sends: list[list[str]] = [[]]
            loss_tier = 0
        else:
            split = split_tiers(model_path, {graph.names[i]: int(t) for i, t in enumerate(tier)},
                                stems, work, check=False, dims=dims)
            files = [str(path) if path else None for path in split.paths[:last + 1]]
            sends = [split.crossing(b) for b in range(last)] + [[]]
            loss_tier = next(t for t, made in enumerate(split.made) if loss_output in made)
        tier_keys, boundary_keys = term_keys(stems)
        config = PeerConfig(
            tiers=[TierPeer(_key(stems[t]), files[t], sends[t],
                            boundary_keys[t - 1][0] if t else "",
                            boundary_keys[t][1] if t < last else "", runs_on[t])
                   for t in range(last + 1)],
            ports=[_free_port() for _ in range(last)], trainable=trainable,
            loss_output=loss_output, loss_tier=loss_tier,
            labels_at=loss_tier if graph.tiers[loss_tier] == graph.tiers[0] else 0,
            inputs=inputs, label_shape=label_shape, classes=classes, scores=scores,
            results=str(work), iterations=iterations, warmup=warmup, lr=lr,
            links=[Link(s.uplink_bps, s.downlink_bps, s.latency_ms) for s in boundaries[:last]],
            paced=why_not is not None or paced, progress=str(work / "progress"),
            cpu=[CpuShare([t for t in range(last + 1) if graph.tiers[t] == name], share)
                 for name, share in shares.items()
                 if any(graph.tiers[t] == name for t in range(last + 1))],
        )
        config_path = work / "config.json"
        config.save(config_path)
        runner = [sys.executable, "-m", "toolkit.train.link", str(config_path),
                  "paced" if config.paced else "shaped"]
        if not config.paced:
            runner = ["unshare", "--net", "--", *runner]
        code, stderr = _run(runner, timeout_s, work / "progress", warmup + iterations,
                            progress)
        if code:
            lines = [line.removeprefix("splitcut train: ")
                     for line in stderr.splitlines() if line.startswith("splitcut train")]
            raise TrainError("; ".join(lines) if lines else f"a peer failed (exit {code})")
        runs = [json.loads((work / f"tier-{t}.json").read_text()) for t in range(last + 1)]
    rows = [{k: v for run in runs for k, v in run["rows"][i].items()}
            for i in range(len(runs[0]["rows"]))]
    measured = {key: 0.0 for key in predicted}
    for t, stem in enumerate(stems[:last + 1]):
        key = _key(stem)
        measured[tier_keys[t]] = statistics.median(r[f"{key}_forward_ms"]
                                                   + r[f"{key}_backward_ms"] for r in rows)
    for up, down in boundary_keys[:last]:
        measured[up] = statistics.median(r[up] for r in rows)
        measured[down] = statistics.median(r[down] for r in rows)
    measured["total_ms"] = statistics.median(r["wall_ms"] for r in rows)
    processors = [t.get("processor", "?") for t in graph.scenario.get("tiers", [])]
    return TrainResult(
        name, cut_label, list(stems), [int(t) for t in tier],
        [list(runs[b + 1]["received"]) for b in range(last)], batch, shaping, rows, measured,
        predicted, [r["loss"] for r in rows],
        ", ".join(f"{stem} {p}" for stem, p in zip(stems, processors, strict=False)), runs_on)


def _torch_device(name: str, device: str) -> str:
    """Tier `name`'s torch device, checked: one this machine has."""
    try:
        where = torch.device(device)
    except (RuntimeError, ValueError):
        raise TrainError(f"{name}: {device!r} is not a torch device (cpu, cuda, "
                         "cuda:1, ...)") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"{name}: cannot run on {device}: torch sees no CUDA GPU here")
    if where.type == "cuda" and (where.index or 0) >= torch.cuda.device_count():
        raise TrainError(f"{name}: cannot run on {device}: this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s)")
    if where.type not in ("cpu", "cuda"):
        raise TrainError(f"{name}: cannot run on {device}: a tier runs on the cpu or cuda")
    return str(where)


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


