"""`python -m bench.unseen`: the toolkit on timm architectures outside the corpus, each checked
against oracles that share nothing with it; writes docs/unseen.md and bench/results/unseen.json.

One architecture per timm family (model module) that `docs/corpus.md` does not hold, its
smallest-named variant, built with random weights at its default input size and exported by
the zoo's TorchScript settings (dynamo where TorchScript cannot), each in a fresh process:
- MACs read from the ONNX file against torch's `FlopCounterMode` on the module itself (which
  counts matrix products and convolutions, as the MACs do);
- trainable parameters against `sum(p.numel() for p in module.parameters())`;
- the block-wise optimum against the general min cut of the whole graph (default scenario);
- `read_onnx` against the read floor (`bench/readfloor.py`), best of 3 each.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench.__main__ import Doc, machine

ROOT = Path(__file__).resolve().parent.parent
OUT, RESULTS = ROOT / "docs" / "unseen.md", ROOT / "bench" / "results" / "unseen.json"
CORPUS = ROOT / "bench" / "results" / "corpus.json"
_SMALL = re.compile(r"(atto|femto|pico|nano|tiny|xxs|xs|small|_t\b|_s\b|_b0|_0)")
TIMEOUT_S = 600  # one architecture: build, both oracles, export, read and solve


def families() -> dict[str, str]:
    """timm family -> the architecture checked: families the corpus holds none of, each by
    its shortest name among those that say they are small (else among all)."""
    import timm

    def family(name: str) -> str:
        return str(timm.models.model_entrypoint(name).__module__).rsplit(".", 1)[-1]

    corpus = json.loads(CORPUS.read_text())["models"]
    done = {family(m["model"][5:]) for m in corpus if m["model"].startswith("timm:")}
    members: dict[str, list[str]] = {}
    for name in timm.list_models():
        members.setdefault(family(name), []).append(name)
    chosen = {}
    for fam, names in sorted(members.items()):
        if fam not in done:
            pool = [n for n in names if _SMALL.search(n)] or names
            chosen[fam] = min(pool, key=lambda n: (len(n), n))
    return chosen


def check(arch: str) -> dict[str, Any]:
    """Everything measured of one timm architecture (in this process)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.readfloor import floor_s
    from toolkit import api, zoo
    from toolkit.blocks import find_blocks
    from toolkit.costs import build_cost_graph
    from toolkit.onnx import read_onnx
    from toolkit.partition import solve

    warnings.filterwarnings("ignore")
    out: dict[str, Any] = {"model": f"timm:{arch}", "exporter": "torchscript"}
    module, args = zoo.get(f"timm:{arch}").build()
    out["oracle_params"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*args)
        out["oracle_macs"] = counter.get_total_flops() / 2
    except Exception as exc:  # torch's own counter fails on some modules
        out["oracle_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            zoo.export_module(torch, module, args, path, "torchscript")
        except Exception as exc:
            out["torchscript_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            out["exporter"] = "dynamo"
            zoo.export_module(torch, module, args, path, "dynamo")
        out["floor_s"] = min(floor_s(path)[0] for _ in range(3))
        reads = []
        for _ in range(3):
            start = time.perf_counter()
            graph = read_onnx(path, out["model"])
            reads.append(time.perf_counter() - start)
        out["read_s"] = min(reads)
    costs = build_cost_graph(graph, api.make_scenario())
    blocks = find_blocks(graph)
    out.update(layers=len(graph), macs=graph.total_macs, params=graph.total_params,
               unknown_sizes=len(graph.unknown_shapes), unsupported=dict(graph.unsupported_ops),
               segments=len(blocks.segments),
               blockwise_ms=solve(costs, "blockwise", blocks=blocks).delay.total,
               general_ms=solve(costs, "general").delay.total)
    return out


def _measured(fam: str, arch: str) -> dict[str, Any]:
    """`check` in a fresh process (memory and imports of one model do not reach the next)."""
    try:
        done = subprocess.run([sys.executable, "-m", "bench.unseen", "--one", arch],
                              capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT)
        lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
        row = json.loads(lines[-1]) if lines else {
            "model": f"timm:{arch}", "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    except subprocess.TimeoutExpired:
        row = {"model": f"timm:{arch}", "error": f"over {TIMEOUT_S} s"}
    return {"family": fam, **row}


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.4f}" if a is not None and b else "-"


def write(rows: list[dict[str, Any]]) -> None:
    ok = [r for r in rows if "error" not in r]
    counted = [r for r in ok if r.get("oracle_macs")]
    same_macs = sum(abs(r["macs"] / r["oracle_macs"] - 1) <= 1e-6 for r in counted)
    same_params = sum(r["params"] == r["oracle_params"] for r in ok)
    exact = sum(abs(r["blockwise_ms"] - r["general_ms"]) <= 1e-9 * max(1.0, r["general_ms"])
                for r in ok)
    ratios = sorted(r["read_s"] / r["floor_s"] for r in ok)
    doc = Doc()
    doc.add("# Architectures the toolkit was not built on")
    doc.add()
    doc.add(f"Generated by `python -m bench.unseen` on {time.strftime('%Y-%m-%d')}. Machine: "
            f"{machine()}. {(__doc__ or '').split(chr(10), 2)[2].strip()}")
    doc.add()
    doc.add(f"Of {len(rows)} architectures, {len(ok)} read and solved. MACs equal torch's count "
            f"for {same_macs} of the {len(counted)} it could count; trainable parameters equal "
            f"for {same_params} of {len(ok)}; the block-wise optimum equals the general min "
            f"cut for {exact} of {len(ok)}. `read` / floor: median "
            f"{ratios[len(ratios) // 2] if ratios else 0:.1f}x, "
            f"{sum(x <= 2 for x in ratios)} of {len(ratios)} within 2x, the most "
            f"{max(ratios, default=0):.1f}x (small weights and many nodes: the per-node Python "
            "work outweighs parsing).")
    doc.add()
    doc.table(["family", "model", "exporter", "layers", "MACs / torch's", "params / torch's",
               "block-wise ms", "general ms", "floor s", "read s", "notes"],
              [[r["family"], r["model"], r.get("exporter", "-"), str(r.get("layers", "-")),
                _ratio(r.get("macs"), r.get("oracle_macs")),
                _ratio(r.get("params"), r.get("oracle_params")),
                f"{r['blockwise_ms']:.3f}" if "blockwise_ms" in r else "-",
                f"{r['general_ms']:.3f}" if "general_ms" in r else "-",
                f"{r['floor_s']:.3f}" if "floor_s" in r else "-",
                f"{r['read_s']:.3f}" if "read_s" in r else "-",
                r.get("error") or r.get("oracle_error", "")] for r in rows])
    OUT.write_text("\n".join(doc.lines) + "\n")
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(check(sys.argv[2]), default=str))
        return
    chosen = families()
    rows = []
    for k, (fam, arch) in enumerate(chosen.items(), start=1):
        rows.append(_measured(fam, arch))
        print(f"{k}/{len(chosen)} {json.dumps(rows[-1], default=str)[:160]}", flush=True)
    write(rows)


if __name__ == "__main__":
    main()
