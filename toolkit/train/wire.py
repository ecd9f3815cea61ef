"""Tensors over a socket without pickle: a small JSON header, then raw buffers.

A message is `SPLT`, the header's length (4 bytes, big-endian), the header — JSON
`{"kind": str, "meta": {...}, "tensors": [{"name", "dtype", "shape"}, ...]}` — and each
tensor's bytes in order, C-contiguous, little-endian. The receiver checks everything before it
allocates: the magic, the header's size and form, dtypes from a fixed list, shapes of
non-negative ints, and the total against a limit. A malformed or oversized message is a
`WireError`; nothing in a message is ever executed.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from collections.abc import Mapping
from typing import Any

import torch

from toolkit.errors import ToolkitError

MAGIC = b"SPLT"
MAX_HEADER = 1 << 20
MAX_RANK = 32
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}


class WireError(ToolkitError):
    """A peer sent something that is not a valid message, or went away mid-message."""


def send(sock: socket.socket, kind: str, tensors: Mapping[str, torch.Tensor],
         **meta: Any) -> int:
    """Send one message; returns the bytes sent (header and payload)."""
    buffers = []
    entries = []
    for name, tensor in tensors.items():
        if tensor.dtype not in _NAMES:
            raise WireError(f"tensor {name!r} has dtype {tensor.dtype}, which the wire does "
                            "not carry")
        data = tensor.detach().contiguous().cpu()
        raw = data.reshape(-1).view(torch.uint8)  # bytes, whatever the dtype (bf16 too)
        buffers.append(raw.numpy().data)
        entries.append({"name": name, "dtype": _NAMES[tensor.dtype], "shape": list(data.shape)})
    header = json.dumps({"kind": kind, "meta": meta, "tensors": entries},
                        allow_nan=False).encode()
    sock.sendall(MAGIC + struct.pack(">I", len(header)) + header)
    for buffer in buffers:
        sock.sendall(buffer)
    return 8 + len(header) + sum(len(b) for b in buffers)


def _exactly(sock: socket.socket, size: int) -> bytearray:
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise WireError("the peer closed the connection mid-message" if got
                            else "the peer closed the connection")
        got += n
    return data


def _entry(entry: object) -> tuple[str, torch.dtype, tuple[int, ...]]:
    if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape"}:
        raise WireError("a tensor entry is not {name, dtype, shape}")
    name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
    if not isinstance(name, str) or dtype not in DTYPES or not isinstance(shape, list):
        raise WireError(f"a tensor entry has a bad name or dtype ({str(dtype)[:40]!r})")
    if len(shape) > MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape):
        raise WireError(f"tensor {name[:100]!r} has a bad shape")
    return name, DTYPES[dtype], tuple(shape)


def receive(sock: socket.socket, max_bytes: int) -> tuple[str, dict[str, Any],
                                                          dict[str, torch.Tensor], int]:
    """One message: (kind, meta, tensors, bytes received). At most `max_bytes` of payload."""
    head = _exactly(sock, 8)
    if bytes(head[:4]) != MAGIC:
        raise WireError("not a splitcut message (bad magic)")
    (length,) = struct.unpack(">I", head[4:])
    if length > MAX_HEADER:
        raise WireError(f"a message header of {length} bytes (at most {MAX_HEADER})")
    try:
        header = json.loads(bytes(_exactly(sock, length)))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError("a message header that is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str) \
            or not isinstance(header.get("meta", {}), dict) \
            or not isinstance(header.get("tensors"), list):
        raise WireError("a message header without kind, meta and tensors")
    entries = [_entry(e) for e in header["tensors"]]
    sizes = [math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
             for _, dtype, shape in entries]
    if sum(sizes) > max_bytes:
        raise WireError(f"a message of {sum(sizes):,} bytes (this peer takes at most "
                        f"{max_bytes:,})")
    tensors = {}
    for (name, dtype, shape), size in zip(entries, sizes, strict=True):
        raw = torch.frombuffer(_exactly(sock, size), dtype=torch.uint8) if size \
            else torch.empty(0, dtype=torch.uint8)
        tensors[name] = raw.view(dtype).reshape(shape)
    return header["kind"], header.get("meta", {}), tensors, 8 + length + sum(sizes)
