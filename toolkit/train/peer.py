"""The two programs of split training: `python -m toolkit.train.peer server|device CONFIG`.

The device runs its half on a fixed synthetic batch, sends the crossing tensors (and the
labels) up in one message, and waits; the server runs its half, the loss, the backward pass
and its optimizer step, and sends the gradients of the float tensors it received back in one
message; the device finishes the backward pass and steps. Each side times its own terms on the
machine's monotonic clock (one clock for both processes), and the device writes them, per
iteration, to the results file named in the config.

A peer that dies or sends garbage ends the other with a one-line error (exit 2).
"""

from __future__ import annotations

import json
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
from toolkit.train.executor import OnnxModule

LABELS = "__labels__"


@dataclass(frozen=True)
class PeerConfig:
    """Everything both peers need, written as JSON by the orchestrator."""

    device_onnx: str
    server_onnx: str | None
    trainable: list[str]
    cut: list[str]  # tensors the device sends up
    loss_output: str  # the model output the loss is computed on
    inputs: dict[str, dict[str, Any]]  # raw input -> {"shape", "dtype"} of the batch
    label_shape: list[int]
    classes: int  # 0: regression on a float output
    port: int
    results: str
    iterations: int = 20
    warmup: int = 3
    lr: float = 0.001
    seed: int = 0
    threads: int = 1
    latency_ms: float = 0.0  # one-way, added by each sender before each message
    pace_bps: dict[str, float] = field(default_factory=dict)  # {"up", "down"}: sender pacing
    progress: str = ""  # a file the device rewrites with the iterations done
    device_cpu: float = 1.0  # the device peer's share of one CPU (a cgroup CFS quota)
    max_bytes: int = 1 << 34

    @classmethod
    def load(cls, path: str) -> PeerConfig:
        return cls(**json.loads(Path(path).read_text()))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


def loss_of(output: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Cross-entropy over the output's last axis against class labels (a classifier or a
    language model head), or mean squared error when there are no classes."""
    if classes:
        return F.cross_entropy(output.reshape(-1, classes).float(), labels.reshape(-1))
    return F.mse_loss(output.float(), labels.float())


def synthetic_inputs(inputs: dict[str, dict[str, Any]], seed: int) -> dict[str, torch.Tensor]:
    """The fixed batch every iteration trains on (so a falling loss shows learning): normal
    floats, and integers in [0, 2) (valid indices for any embedding table)."""
    generator = torch.Generator().manual_seed(seed)
    feeds = {}
    for name, spec in inputs.items():
        dtype = wire.DTYPES[spec["dtype"]]
        if dtype.is_floating_point:
            feeds[name] = torch.randn(spec["shape"], generator=generator).to(dtype)
        else:
            feeds[name] = torch.randint(0, 2, spec["shape"], generator=generator, dtype=dtype)
    return feeds


def synthetic_labels(shape: list[int], classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    if classes:
        return torch.randint(0, classes, shape, generator=generator)
    return torch.randn(shape, generator=generator)


def _send(sock: socket.socket, config: PeerConfig, direction: str, kind: str,
          tensors: dict[str, torch.Tensor], **meta: Any) -> None:
    """One message, after the link's one-way latency; paced in the sender when the kernel
    does not shape the link."""
    start = time.monotonic()  # the message's time counts from here, latency included
    if config.latency_ms:
        time.sleep(config.latency_ms / 1e3)
    sending = time.monotonic()
    sent = wire.send(sock, kind, tensors, sent_at=start, **meta)
    rate = config.pace_bps.get(direction)
    if rate:
        time.sleep(max(0.0, sending + sent * 8 / rate - time.monotonic()))


def _optimizer(module: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=lr)


def serve(config: PeerConfig) -> None:
    """The server half: answer forward messages until the device says stop."""
    assert config.server_onnx is not None
    module = OnnxModule(onnx.load(config.server_onnx), config.trainable)
    optimizer = _optimizer(module, config.lr)
    with socket.create_server(("127.0.0.1", config.port)) as listener:
        listener.settimeout(120)
        conn, _ = listener.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            kind, _, tensors, _ = wire.receive(conn, config.max_bytes)
            received = time.monotonic()
            if kind == "stop":
                return
            if kind != "forward":
                raise wire.WireError(f"the device sent a {kind[:40]!r} message")
            labels = tensors.pop(LABELS)
            for t in tensors.values():
                t.requires_grad_(t.is_floating_point())
            output = module(tensors)[config.loss_output]
            loss = loss_of(output, labels, config.classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done = time.monotonic()
            grads = {name: t.grad if t.grad is not None else torch.zeros_like(t)
                     for name, t in tensors.items() if t.is_floating_point()}
            _send(conn, config, "down", "gradients", grads, loss=loss.item(),
                  received_at=received, server_ms=(done - received) * 1e3)


def run_device(config: PeerConfig) -> None:
    """The device half: train for warm-up + iterations and write the measured terms."""
    module = OnnxModule(onnx.load(config.device_onnx), config.trainable)
    optimizer = _optimizer(module, config.lr)
    feeds = synthetic_inputs(config.inputs, config.seed)
    labels = synthetic_labels(config.label_shape, config.classes, config.seed)
    rows = []
    sock = _connect(config.port) if config.server_onnx else None
    try:
        for step in range(config.warmup + config.iterations):
            start = time.monotonic()
            outputs = module(feeds)
            forward = time.monotonic()
            row: dict[str, float] = {"device_forward_ms": (forward - start) * 1e3}
            backward_from = forward  # split: from when the gradients arrive
            if sock is None:  # the whole model on the device
                loss = loss_of(outputs[config.loss_output], labels, config.classes)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                cut = {name: outputs[name] for name in config.cut}
                _send(sock, config, "up", "forward",
                      {**{n: t.detach() for n, t in cut.items()}, LABELS: labels})
                kind, meta, grads, _ = wire.receive(sock, config.max_bytes)
                arrived = time.monotonic()
                if kind != "gradients":
                    raise wire.WireError(f"the server sent a {kind[:40]!r} message")
                floats = [n for n in config.cut if cut[n].requires_grad]
                optimizer.zero_grad(set_to_none=True)
                if floats:
                    torch.autograd.backward([cut[n] for n in floats], [grads[n] for n in floats])
                optimizer.step()
                loss = torch.tensor(float(meta["loss"]))
                row.update(upload_ms=(float(meta["received_at"]) - forward) * 1e3,
                           server_ms=float(meta["server_ms"]),
                           download_ms=(arrived - float(meta["sent_at"])) * 1e3)
                backward_from = arrived
            end = time.monotonic()
            row["device_backward_ms"] = (end - backward_from) * 1e3
            row["wall_ms"] = (end - start) * 1e3
            row["loss"] = float(loss)
            if step >= config.warmup:
                rows.append(row)
            if config.progress:
                Path(config.progress).write_text(str(step + 1))
        if sock is not None:
            wire.send(sock, "stop", {})
    finally:
        if sock is not None:
            sock.close()
    Path(config.results).write_text(json.dumps(rows))


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
    role, path = argv
    config = PeerConfig.load(path)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    other = "device" if role == "server" else "server"
    try:
        (serve if role == "server" else run_device)(config)
    except ConnectionError as exc:
        print(f"splitcut train: {role}: lost the {other} ({(exc.strerror or str(exc)).lower()})",
              file=sys.stderr)
        return 2
    except wire.WireError as exc:
        print(f"splitcut train: {role}: {str(exc).replace('the peer', f'the {other}')}",
              file=sys.stderr)
        return 2
    except (ToolkitError, OSError) as exc:
        print(f"splitcut train: {role}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
