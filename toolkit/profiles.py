"""Processor and link profiles: TOML data shipped in `toolkit/profiles/`, or the user's own."""

from __future__ import annotations

import functools
import math
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from toolkit.errors import ProfileError, ScenarioError

BACKENDS = ("cpu", "cuda")
_NUMBERS = (
    "fp32_tflops", "fp16_tflops", "memory_gbps", "matmul_efficiency", "conv_efficiency",
    "vector_efficiency", "memory_efficiency", "layer_overhead_us",
)


@dataclass(frozen=True)
class Processor:
    """Where layers run: peak rates, sustained efficiencies and a per-op launch overhead."""

    name: str
    kind: str
    description: str
    fp32_tflops: float
    fp16_tflops: float
    memory_gbps: float
    matmul_efficiency: float
    conv_efficiency: float
    vector_efficiency: float
    memory_efficiency: float
    layer_overhead_us: float
    sources: dict[str, str]
    memory_gb: float | None = None  # what training may use (a device's whole memory)
    backend: str = "cpu"  # where PyTorch trains on it: "cpu" or "cuda" (sizes a dropout's mask)


@dataclass(frozen=True)
class Link:
    name: str
    description: str
    uplink_bps: float
    downlink_bps: float
    latency_ms: float
    source: str


def _builtin_files() -> list[Path]:
    root = resources.files("toolkit") / "profiles"
    return sorted(Path(str(p)) for p in root.iterdir() if str(p).endswith(".toml"))


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"malformed TOML in {path}: {str(exc).splitlines()[0]}") from exc


def parse_processor(data: dict[str, object], origin: str) -> Processor:
    """Validate one processor profile: every number present, positive, and with a source."""
    missing = [k for k in ("name", "kind", *_NUMBERS) if k not in data]
    if missing:
        raise ProfileError(f"profile {origin} lacks {', '.join(missing)}")
    values: dict[str, float] = {}
    for key in _NUMBERS:
        value = data[key]
        if not isinstance(value, int | float) or isinstance(value, bool) \
                or not 0 <= value < math.inf:
            raise ProfileError(f"profile {origin}: {key} must be a finite, non-negative number")
        values[key] = float(value)
    for key in ("fp32_tflops", "fp16_tflops", "memory_gbps", "matmul_efficiency",
                "conv_efficiency", "vector_efficiency", "memory_efficiency"):
        if values[key] <= 0:
            raise ProfileError(f"profile {origin}: {key} must be positive")
    if data["kind"] not in ("device", "server"):
        raise ProfileError(f"profile {origin}: kind must be 'device' or 'server'")
    sources = data.get("sources", {})
    if not isinstance(sources, dict):
        raise ProfileError(f"profile {origin}: [sources] must be a table")
    memory = data.get("memory_gb")
    if memory is not None and (not isinstance(memory, int | float) or isinstance(memory, bool)
                               or not 0 < memory < math.inf):
        raise ProfileError(f"profile {origin}: memory_gb must be a finite, positive number")
    backend = data.get("backend", "cpu")
    if backend not in BACKENDS:
        raise ProfileError(f"profile {origin}: backend must be one of {', '.join(BACKENDS)}")
    return Processor(
        name=str(data["name"]), kind=str(data["kind"]), backend=str(backend),
        description=str(data.get("description", "")), sources={
            str(k): str(v) for k, v in sources.items()
        }, memory_gb=float(memory) if memory is not None else None, **values,
    )


def processors(profile_dir: str | Path | None = None) -> dict[str, Processor]:
    """Built-in processors plus those in `profile_dir` (which win on a name clash)."""
    found = dict(_builtin_processors())
    if profile_dir is not None:
        d = Path(profile_dir)
        if not d.is_dir():
            raise ProfileError(f"profile directory {d} does not exist")
        found.update(_parse_files(sorted(d.glob("*.toml"))))
    return found


@functools.cache
def _builtin_processors() -> dict[str, Processor]:
    return _parse_files(_builtin_files())


def _parse_files(files: list[Path]) -> dict[str, Processor]:
    found: dict[str, Processor] = {}
    for path in files:
        if path.name != "links.toml":
            proc = parse_processor(_read_toml(path), str(path))
            found[proc.name] = proc
    return found


def processor(name_or_path: str, profile_dir: str | Path | None = None) -> Processor:
    """A processor by name, or from a TOML file path; unknown names list the known ones."""
    if name_or_path.endswith(".toml"):
        return parse_processor(_read_toml(Path(name_or_path)), name_or_path)
    known = processors(profile_dir)
    if name_or_path not in known:
        raise ProfileError(
            f"unknown profile {name_or_path!r}; known: {', '.join(sorted(known))}"
        )
    return known[name_or_path]


@functools.cache
def links() -> dict[str, Link]:
    data = _read_toml(next(p for p in _builtin_files() if p.name == "links.toml"))
    found = {}
    for name, entry in data.items():
        assert isinstance(entry, dict)
        found[name] = Link(
            name, str(entry["description"]), float(entry["uplink_bps"]),
            float(entry["downlink_bps"]), float(entry["latency_ms"]), str(entry["source"]),
        )
    return found


def link(name: str) -> Link:
    known = links()
    if name not in known:
        raise ProfileError(f"unknown link preset {name!r}; known: {', '.join(known)}")
    return known[name]


_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)"
                   r"(bps|bit/s|b/s|Bps|B/s|byte/s|bytes/s)\s*$")
"""A rate: bits with a lowercase b or 'bit', bytes with a capital B or 'byte' (20MB/s is 160
Mbit/s); the prefix's case does not matter."""
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(i?)b\s*$", re.I)


def parse_size(text: str) -> float:
    """'2.5GB', '512 MB', '3GiB' -> bytes (GB = 1e9 bytes, GiB = 2^30). A size needs its
    unit; zero, negative or overflowing sizes are errors."""
    m = _SIZE.match(text)
    if m is None:
        raise ScenarioError(f"cannot read memory size {text!r}: write it with a unit, like "
                            "2.5GB, 512MB or 3GiB")
    prefix = m.group(2).lower()
    scale = 1024.0 ** "kmgt".index(prefix) * 1024 if m.group(3) and prefix else _SCALE[prefix]
    value = float(m.group(1)) * scale
    if not 0 < value < math.inf:
        raise ScenarioError(f"memory size {text!r} must be finite and greater than zero")
    return value


def parse_rate(text: str) -> float:
    """'20Mbps', '1.5 Gbit/s', '800kbps', '2e7bps', '10MB/s' (bytes) -> bit/s. A rate needs
    its unit ('20' could be bit/s or Mbit/s); zero, negative or overflowing rates are errors."""
    m = _RATE.match(text)
    if m is None:
        raise ScenarioError(f"cannot read rate {text!r}: write it with a unit, like 20Mbps, "
                            "1.5Gbps, 800kbps, 2e7bps or 10MB/s (bytes)")
    bits_per_unit = 8.0 if m.group(3).startswith(("B", "byte")) else 1.0
    value = float(m.group(1)) * _SCALE[m.group(2).lower()] * bits_per_unit
    if not 0 < value < math.inf:
        raise ScenarioError(f"rate {text!r} must be finite and greater than zero")
    return value


_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|us)?\s*$", re.I)


def parse_latency(text: str) -> float:
    """'5ms', '0.2 s', '300us', '5' (ms) -> milliseconds."""
    m = _TIME.match(text)
    if m is None:
        raise ScenarioError(f"cannot read latency {text!r}: write it like 5ms or 300us")
    unit = (m.group(2) or "ms").lower()
    value = float(m.group(1)) * {"ms": 1.0, "s": 1000.0, "us": 0.001}[unit]
    if not value < math.inf:
        raise ScenarioError(f"latency {text[:40]!r} must be finite")
    return value
