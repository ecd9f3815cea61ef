"""Measured profiles as data: per-layer times for one processor, read from JSON and checked.
Pure (no timing here: `toolkit.measure` makes them), so the cost model can use them.

A measured profile is JSON: the model, its layer names, the processor name it stands for, the
batch it was measured at, and per-layer `forward_ms` (and `backward_ms` where torch measured
it). `--measured PROFILE.json` puts these times in place of the roofline for that processor.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ScenarioError
from toolkit.graph import LayerGraph


@dataclass(frozen=True)
class MeasuredProfile:
    model: str
    processor: str
    batch: int
    source: str
    layers_sha: str
    forward_ms: dict[str, float]
    backward_ms: dict[str, float]
    source_model: str = ""  # the MODEL argument it was measured from (file or zoo name)
    machine: str = ""  # the CPU it ran on (/proc/cpuinfo's model name, cores)
    dims: dict[str, int] = field(default_factory=dict)  # the model read with (`--dim`)
    sizes_sha: str = ""  # `sizes_sha` of the model measured ("" in profiles made before it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "processor": self.processor, "batch": self.batch,
            "source": self.source, "layers_sha256": self.layers_sha,
            "sizes_sha256": self.sizes_sha,
            "source_model": self.source_model, "machine": self.machine, "dims": self.dims,
            "layers": {
                name: {"forward_ms": f, "backward_ms": self.backward_ms.get(name)}
                for name, f in self.forward_ms.items()
            },
        }

    def check_model(self, graph: LayerGraph) -> None:
        """A profile measured on another model (or another export), or on this one at other
        input sizes (another `--dim`: its times are not this model's), is refused."""
        if self.layers_sha != layers_sha(graph):
            raise ScenarioError(
                f"measured profile was made for model {self.model!r} "
                f"({len(self.forward_ms)} layers), not for {graph.name!r} ({len(graph)} layers)"
            )
        if self.sizes_sha and self.sizes_sha != sizes_sha(graph):
            given = " ".join(f"--dim {k}={v}" for k, v in self.dims.items()) or "no --dim"
            raise ScenarioError(
                f"measured profile was made for model {self.model!r} at other input sizes "
                f"({given}): read the model as it was measured, or measure it again")


def layers_sha(graph: LayerGraph) -> str:
    """Identifies a model's layer structure: names and ops in order."""
    text = "\n".join(f"{layer.name}\t{layer.op}" for layer in graph)
    return hashlib.sha256(text.encode()).hexdigest()


def sizes_sha(graph: LayerGraph) -> str:
    """Identifies the sizes a model was read at: each layer's output bytes per sample, which
    the input sizes (`--dim`) set."""
    text = "\n".join(str(layer.out_bytes) for layer in graph)
    return hashlib.sha256(text.encode()).hexdigest()


def load_profile(path: str | Path) -> MeasuredProfile:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        layers = data["layers"]
        if not isinstance(layers, dict):
            raise TypeError("'layers' must map layer names to times")
        batch = data["batch"]
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive integer, not {batch!r}")
        profile = MeasuredProfile(
            model=str(data["model"]), processor=str(data["processor"]), batch=batch,
            source=str(data.get("source", "")), layers_sha=str(data["layers_sha256"]),
            forward_ms={k: _time(k, v["forward_ms"]) for k, v in layers.items()},
            backward_ms={k: _time(k, v["backward_ms"]) for k, v in layers.items()
                         if v.get("backward_ms") is not None},
            source_model=str(data.get("source_model", "")),
            machine=str(data.get("machine", "")),
            dims=_dims(data.get("dims", {})),
            sizes_sha=str(data.get("sizes_sha256", "")),
        )
    except OSError as exc:
        raise ScenarioError(f"cannot read measured profile {p}: {exc.strerror}") from exc
    except KeyError as exc:
        raise ScenarioError(f"{p} is not a measured profile (`splitcut profile` writes one): "
                            f"it lacks {exc}") from exc
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ScenarioError(
            f"{p} is not a measured profile ({type(exc).__name__}: {reason})") from exc
    return profile


def _dims(value: object) -> dict[str, int]:
    """The `--dim` values a profile's model was read with: names to integers, not
    negative (0: an empty cache)."""
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in value.items()):
        raise ValueError("dims must map dimension names to integers, not negative, not "
                         f"{str(value)[:100]}")
    return dict(value)


def _time(layer: str, value: object) -> float:
    """A measured time: a finite number of milliseconds, not negative."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 <= float(value) < math.inf:
        raise ValueError(f"layer {layer!r}: time {value!r} must be a finite, non-negative "
                         "number of milliseconds")
    return float(value)


def this_machine() -> str:
    """The CPU this process runs on, as a profile's description: '/proc/cpuinfo' model name
    and the cores it may use (the platform's name where there is no /proc/cpuinfo)."""
    import os
    import platform

    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                name = value.strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name or platform.processor() or platform.machine()}, {cores} cores"
