"""One program per tier of split training: `python -m toolkit.train.peer T NAME CONFIG`.

The chain's tiers run as one process each, boundary b between tier b and tier b+1 a TCP
connection (tier b+1 listens on `ports[b]`). Each iteration, tier 0 runs its part on a fixed
synthetic batch and sends up what crosses its boundary; every later tier receives, runs its
part and sends on what crosses the next boundary, its own tensors and those it relays (a
tensor made on tier i and read on tier j crosses every boundary between them, once). The tier
holding the loss computes it, and the backward pass runs down the chain: each tier back-
propagates the gradients it receives (of the float tensors it sent; a relayed tensor's
gradient adds to its own use of it), takes its optimizer step and sends down the gradients of
the float tensors it received. Two tiers are the device and the server.

The labels are made on tier 0 and travel up with the activations to the tier holding the
loss, unless that tier is the device again (a U-shape: `labels_at` names it), where the same
seed makes them: they never cross a link. Each process times its own terms on the machine's
monotonic clock (one clock for all), each message from when its sender started it (latency
included) to when it has fully arrived, and writes them per iteration to its results file.

A peer that dies or sends garbage ends the others with a one-line error (exit 2).
"""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn.functional as F

from toolkit.errors import ToolkitError
from toolkit.train import wire
from toolkit.train.executor import OnnxModule, synchronize

LABELS = "__labels__"


@dataclass(frozen=True)
class TierPeer:
    """One tier's process: its file, and what it sends up the chain."""

    name: str  # the tier's file stem ("device", "server", "device-tail", "edge")
    onnx: str | None  # None: the tier holds no layer and only relays
    sends: list[str]  # the tensors that cross the boundary after it, its own and relayed
    up_key: str = ""  # the measured term of the message it receives from below
    down_key: str = ""  # ... and of the gradients it receives from above
    device: str = "cpu"  # where its part runs (a torch device: "cuda" for a GPU server)


@dataclass(frozen=True)
class Link:
    """One boundary's link: rates towards the later tier (up) and back, one-way latency."""

    up_bps: float
    down_bps: float
    latency_ms: float = 0.0


@dataclass(frozen=True)
class CpuShare:
    """Tiers that run on one processor (a U-shape's device head and tail) and its share of
    one CPU: one cgroup CFS quota for all of them."""

    tiers: list[int]
    fraction: float


@dataclass(frozen=True)
class PeerConfig:
    """Everything every tier needs, written as JSON by the orchestrator."""

    tiers: list[TierPeer]  # the tiers that run, in chain order
    ports: list[int]  # per boundary between them
    trainable: list[str]
    loss_output: str  # the model output the loss is computed on
    loss_tier: int  # the tier that makes it
    labels_at: int  # where the labels are made: 0, or the loss tier when that is the device
    inputs: dict[str, dict[str, Any]]  # raw input -> {"shape", "dtype"} of the batch
    label_shape: list[int]
    classes: int  # 0: regression on a float output
    scores: str  # what the output holds of its classes (score_kind)
    results: str  # a folder: tier t writes tier-t.json
    iterations: int = 20
    warmup: int = 3
    lr: float = 0.001
    seed: int = 0
    threads: int = 1
    links: list[Link] = field(default_factory=list)  # per boundary
    paced: bool = False  # senders pace themselves (the kernel does not shape the links)
    progress: str = ""  # a file tier 0 rewrites with the iterations done
    cpu: list[CpuShare] = field(default_factory=list)  # slower processors, emulated
    max_bytes: int = 1 << 34

    @classmethod
    def load(cls, path: str) -> PeerConfig:
        data = json.loads(Path(path).read_text())
        return cls(**{**data, "tiers": [TierPeer(**t) for t in data["tiers"]],
                      "links": [Link(**b) for b in data["links"]],
                      "cpu": [CpuShare(**c) for c in data["cpu"]]})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


def loss_of(output: torch.Tensor, labels: torch.Tensor, classes: int,
            scores: str = "logits") -> torch.Tensor:
    """Cross-entropy over the output's last axis against class labels (a classifier or a
    language model head), of the scores as `score_kind` finds them, or mean squared error
    when there are no classes."""
    if classes:
        flat = output.reshape(-1, classes).float()
        if scores == "probabilities":
            flat = torch.log(flat.clamp_min(torch.finfo(flat.dtype).tiny))
        if scores == "logits":
            return F.cross_entropy(flat, labels.reshape(-1))
        return F.nll_loss(flat, labels.reshape(-1))
    return F.mse_loss(output.float(), labels.float())


def score_kind(output: torch.Tensor, classes: int) -> str:
    """How a classifier's output scores its classes: "logits", or "probabilities" where a
    softmax ends the model (as Keras' applications and scikit-learn's MLPs end) or
    "log-probabilities" where a log-softmax does. Read from the values, whatever node made
    them: each row in [0, 1] summing to 1, or its log (the first 64 rows: a language model's
    output at a full batch is a gigabyte, and no row of logits sums to 1 by chance). A
    cross-entropy that took probabilities for logits would barely move (2.304 -> 2.304 in 3
    steps)."""
    if not classes or output.numel() == 0:
        return "logits"
    rows = output.detach().reshape(-1, classes)[:64].double()
    tolerance = 1e-2 if output.dtype in (torch.float16, torch.bfloat16) else 1e-4
    if not torch.isfinite(rows).all():
        return "logits"
    if (rows >= 0).all() and (rows <= 1).all() \
            and ((rows.sum(-1) - 1).abs() <= tolerance).all():
        return "probabilities"
    if (rows <= 0).all() and (torch.logsumexp(rows, -1).abs() <= tolerance).all():
        return "log-probabilities"
    return "logits"


def synthetic_inputs(inputs: dict[str, dict[str, Any]], seed: int) -> dict[str, torch.Tensor]:
    """The fixed batch every iteration trains on (so a falling loss shows learning): normal
    floats, and integers (and booleans) all 1: a valid index into any table of two or more
    rows, no divisor 0, and an attention mask that masks nothing. Random zeros and ones
    masked a whole row of some sequences (GPT-2 by Hugging Face's optimum): its softmax over
    nothing made every gradient not a number."""
    generator = torch.Generator().manual_seed(seed)
    feeds = {}
    for name, spec in inputs.items():
        dtype = wire.DTYPES[spec["dtype"]]
        if dtype.is_floating_point:
            feeds[name] = torch.randn(spec["shape"], generator=generator).to(dtype)
        else:
            feeds[name] = torch.ones(spec["shape"], dtype=dtype)
    return feeds


def label_kind(output: torch.Tensor) -> tuple[int, list[int]]:
    """(classes, label shape) for training against `output`: class labels over its last axis
    where it holds scores of two or more classes (a classifier, a language model head), else
    (0, its shape) for regression (one score per sample has no classes to tell apart: its
    cross-entropy is 0 whatever it says, so nothing would learn)."""
    if output.is_floating_point() and output.dim() >= 2 and output.shape[-1] > 1:
        return int(output.shape[-1]), list(output.shape[:-1])
    return 0, list(output.shape)


def synthetic_labels(shape: list[int], classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    if classes:
        return torch.randint(0, classes, shape, generator=generator)
    return torch.randn(shape, generator=generator)


def _send(sock: socket.socket, config: PeerConfig, boundary: int, up: bool, kind: str,
          tensors: dict[str, torch.Tensor], **meta: Any) -> None:
    """One message over `boundary`, after its one-way latency; paced in the sender when the
    kernel does not shape the link."""
    link = config.links[boundary]
    start = time.monotonic()  # the message's time counts from here, latency included
    if link.latency_ms:
        time.sleep(link.latency_ms / 1e3)
    sending = time.monotonic()
    sent = wire.send(sock, kind, tensors, sent_at=start, **meta)
    if config.paced:
        rate = link.up_bps if up else link.down_bps
        time.sleep(max(0.0, sending + sent * 8 / rate - time.monotonic()))


def _receive(sock: socket.socket, config: PeerConfig, wanted: str
             ) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], float]:
    """The next message (a `wanted` one or "stop"), and how long it took from when its sender
    started it."""
    kind, meta, tensors, _ = wire.receive(sock, config.max_bytes)
    arrived = time.monotonic()
    if kind not in (wanted, "stop"):
        raise wire.WireError(f"the peer sent a {kind[:40]!r} message, not {wanted!r}")
    return kind, meta, tensors, (arrived - float(meta.get("sent_at", arrived))) * 1e3


class _Tier:
    """One tier's process: its part of the model, its optimizer and its two connections."""

    def __init__(self, config: PeerConfig, t: int) -> None:
        self.config, self.t = config, t
        self.me = config.tiers[t]
        self.module: OnnxModule | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.labels: torch.Tensor | None = None
        self.below: socket.socket | None = None
        self.above: socket.socket | None = None
        self.received: list[str] = []  # what the last forward message carried
        self.other = ""  # the neighbour talked to last (for errors)
        self.device = torch.device(self.me.device)

    def run(self) -> list[dict[str, Any]]:
        """Train until tier 0 has done warm-up + iterations; this tier's measured rows."""
        config, t = self.config, self.t
        if self.me.onnx:
            self.module = OnnxModule(onnx.load(self.me.onnx), config.trainable).to(self.device)
            weights = list(self.module.parameters())
            self.optimizer = torch.optim.SGD(weights, lr=config.lr) if weights else None
        if t == config.labels_at:
            self.labels = synthetic_labels(config.label_shape, config.classes,
                                           config.seed).to(self.device)
        if t > 0:
            self.other = config.tiers[t - 1].name
            with socket.create_server(("127.0.0.1", config.ports[t - 1])) as listener:
                listener.settimeout(120)
                self.below, _ = listener.accept()
            self.below.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if t + 1 < len(config.tiers):
            self.other = config.tiers[t + 1].name
            self.above = _connect(config.ports[t])
        feeds = {n: x.to(self.device) for n, x in
                 synthetic_inputs(config.inputs, config.seed).items()} if t == 0 else {}
        rows = []
        step = 0
        while t > 0 or step < config.warmup + config.iterations:
            row = self.iteration(feeds)
            if row is None:  # the tier below said stop
                break
            if step >= config.warmup:
                rows.append(row)
            step += 1
            if t == 0 and config.progress:
                Path(config.progress).write_text(str(step))
        if self.above is not None:
            wire.send(self.above, "stop", {})
        return rows

    def iteration(self, feeds: dict[str, torch.Tensor]) -> dict[str, Any] | None:
        """One forward and backward pass through this tier; None when told to stop."""
        config, me, name = self.config, self.me, self.me.name
        row: dict[str, Any] = {}
        start = time.monotonic()
        received = dict(feeds)
        if self.below is not None:
            self.other = config.tiers[self.t - 1].name
            kind, _, received, row[me.up_key] = _receive(self.below, config, "forward")
            if kind == "stop":
                return None
            start = time.monotonic()
            received = {n: x.to(self.device).requires_grad_(x.is_floating_point() and n != LABELS)
                        for n, x in received.items()}
            self.received = sorted(received)
        labels = received.pop(LABELS, self.labels)
        here = {**received, **(self.module(received) if self.module is not None else {})}
        loss = loss_of(here[config.loss_output], labels, config.classes, config.scores) \
            if self.t == config.loss_tier else None
        grads: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        synchronize(list(here.values()))
        backward_from = time.monotonic()
        row[f"{name}_forward_ms"] = (backward_from - start) * 1e3
        if self.above is not None:
            up = {n: here[n].detach().cpu() for n in me.sends}
            if labels is not None and self.t < config.loss_tier:
                up[LABELS] = labels.cpu()
            self.other = config.tiers[self.t + 1].name
            _send(self.above, config, self.t, True, "forward", up)
            _, meta, grads, row[me.down_key] = _receive(
                self.above, config, "gradients")
            backward_from = time.monotonic()
        roots = [here[n] for n in me.sends if n in grads and here[n].requires_grad]
        gradients: list[torch.Tensor | None] = [grads[n].to(self.device) for n in me.sends
                                                if n in grads and here[n].requires_grad]
        if loss is not None:
            roots.append(loss)
            gradients.append(None)
            value = loss.item()  # (not a number: an empty output, or training that diverged)
            meta["loss"] = value if math.isfinite(value) else None
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        if roots:
            torch.autograd.backward(roots, gradients)
        if self.optimizer is not None:
            self.optimizer.step()
        if self.below is not None:
            self.other = config.tiers[self.t - 1].name
            down = {n: (x.grad if x.grad is not None else torch.zeros_like(x)).cpu()
                    for n, x in received.items() if x.is_floating_point()}
            row[f"{name}_backward_ms"] = (time.monotonic() - backward_from) * 1e3
            _send(self.below, config, self.t - 1, False, "gradients", down,
                  loss=meta.get("loss"))
        else:
            synchronize(list(here.values()))
            end = time.monotonic()
            row[f"{name}_backward_ms"] = (end - backward_from) * 1e3
            row["wall_ms"] = (end - start) * 1e3
            row["loss"] = meta["loss"]
        return row


def _connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 120
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=600)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main(argv: list[str]) -> int:
    index, _, path = argv  # (the tier's name is there for `ps`)
    config = PeerConfig.load(path)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    tier = _Tier(config, int(index))
    role = tier.me.name
    try:
        try:
            rows = tier.run()
        finally:
            for sock in (tier.below, tier.above):
                if sock is not None:
                    sock.close()
        (Path(config.results) / f"tier-{index}.json").write_text(
            json.dumps({"rows": rows, "received": tier.received}))
    except ConnectionError as exc:
        print(f"splitcut train: {role}: lost the {tier.other} "
              f"({(exc.strerror or str(exc)).lower()})", file=sys.stderr)
        return 2
    except wire.WireError as exc:
        print(f"splitcut train: {role}: {str(exc).replace('the peer', f'the {tier.other}')}",
              file=sys.stderr)
        return 2
    except (ToolkitError, OSError) as exc:
        print(f"splitcut train: {role}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
