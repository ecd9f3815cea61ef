"""`python -m bench.unseen [--source timm hf torchvision]`: the toolkit on architectures outside
the corpus, each checked against oracles that share nothing with it; writes docs/unseen.md and
bench/results/unseen.json (a source not run keeps its rows from the last run; `--doc-only`
rewrites the page from them).

- timm: one architecture per timm family (model module) that `docs/corpus.md` does not hold,
  its smallest-named variant, at its default input size;
- hf: transformers model types the corpus does not hold (`HF_TYPES`), each built from its
  default config with the sizes `HF_SMALL` names shrunk (two layers, width 256) where that
  config takes them (its defaults where it cannot build so), reading token ids, an image or
  audio as the zoo's `hf:config.json` does;
- torchvision: every model of its segmentation, detection, video and optical-flow modules,
  the classification models being the corpus's (an image of 224 x 224, of 320 x 320 for
  detection, 16 frames of 224 x 224 for video, two frames of 128 x 128 for optical flow).

Each is built with random weights and exported as `splitcut zoo export` does (`export_pytorch`:
TorchScript, dynamo where TorchScript cannot; frozen parameters marked), in a fresh process:
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
SOURCES = ("timm", "hf", "torchvision")
OUT, RESULTS = ROOT / "docs" / "unseen.md", ROOT / "bench" / "results" / "unseen.json"
CORPUS = ROOT / "bench" / "results" / "corpus.json"
_SMALL = re.compile(r"(atto|femto|pico|nano|tiny|xxs|xs|small|_t\b|_s\b|_b0|_0)")
TIMEOUT_S = 600  # one architecture: build, both oracles, export, read and solve


HF_TYPES = (
    "xlnet", "funnel", "squeezebert", "longformer", "big_bird", "led", "layoutlm", "ernie",
    "mpnet", "xlm-roberta", "ibert", "rembert", "canine", "fnet", "nystromformer",
    "data2vec-text", "data2vec-audio", "sew", "sew-d", "unispeech", "wavlm", "vit_mae",
    "dinov2", "levit", "poolformer", "regnet", "resnet", "swin", "swinv2", "cvt",
    "efficientnet", "bit", "focalnet", "mobilenet_v2", "pvt", "dpt", "yolos", "mt5", "longt5",
    "switch_transformers", "prophetnet", "m2m_100", "marian", "blenderbot", "plbart", "fsmt",
    "xglm", "gpt_neo", "biogpt", "mpt", "olmo", "cohere", "starcoder2", "phi3", "granite",
    "rwkv", "phi", "gemma", "falcon", "gpt_neox", "bloom", "deberta-v2", "mobilebert", "mbart",
    "pegasus", "hubert", "beit", "deit", "convnext", "mobilevit", "gptj", "codegen",
    "gpt_bigcode", "stablelm", "mamba",
)
"""transformers model types outside the corpus: text encoders and decoders, encoder-decoders,
vision and audio models, state-space and recurrent ones."""
HF_SMALL = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 512, "num_hidden_layers": 2, "vocab_size": 1000,
            "n_embd": 256, "n_head": 4, "n_layer": 2, "n_inner": 512, "num_layers": 2,
            "d_model": 256, "encoder_layers": 2, "decoder_layers": 2,
            "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 512,
            "decoder_ffn_dim": 512, "ffn_dim": 512, "head_dim": 64, "num_heads": 4,
            "d_ff": 512, "d_kv": 64}
TORCHVISION_TASKS = {"segmentation": [(1, 3, 224, 224)], "detection": "images",
                     "video": [(1, 3, 16, 224, 224)], "optical_flow": [(1, 3, 128, 128)] * 2}


def candidates(source: str) -> dict[str, str]:
    """Family -> the name checked (`timm:NAME`, `hf:TYPE`, `torchvision:NAME`) for `source`."""
    if source == "timm":
        return {fam: f"timm:{arch}" for fam, arch in families().items()}
    if source == "hf":
        return {model_type: f"hf:{model_type}" for model_type in HF_TYPES}
    import torchvision

    return {f"{task}/{name}": f"torchvision:{name}" for task in TORCHVISION_TASKS
            for name in torchvision.models.list_models(getattr(torchvision.models, task))}


def _hf_config(model_type: str, small: bool, folder: Path) -> Path:
    """A config.json in `folder` for `model_type`: its defaults, the sizes of `HF_SMALL` it
    takes as plain numbers shrunk where `small`."""
    import transformers

    base = transformers.AutoConfig.for_model(model_type).to_dict()
    values = {k: v for k, v in HF_SMALL.items()
              if small and isinstance(base.get(k), int) and not isinstance(base.get(k), bool)}
    if "vocab_size" in values:  # a padding or special token past the shrunk vocabulary
        tokens = [v for k, v in base.items() if k.endswith("token_id") and isinstance(v, int)]
        values["vocab_size"] = max([values["vocab_size"], *(t + 1 for t in tokens)])
    path = folder / "config.json"
    path.write_text(json.dumps({**values, "model_type": model_type}))
    return path


def build(name: str) -> tuple[Any, tuple[Any, ...]]:
    """The module and its example inputs, with random weights."""
    import torch

    from toolkit import zoo

    source, arch = name.split(":", 1)
    if source == "hf":
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return zoo.get(f"hf:{_hf_config(arch, True, Path(tmp))}").build()
            except Exception:  # sizes this config does not take shrunk: its defaults
                return zoo.get(f"hf:{_hf_config(arch, False, Path(tmp))}").build()
    if source == "torchvision":
        import torchvision

        task = next(t for t in TORCHVISION_TASKS if arch in torchvision.models.list_models(
            getattr(torchvision.models, t)))
        kwargs = {"weights": None, "weights_backbone": None} \
            if task in ("segmentation", "detection") else {"weights": None}
        module = torchvision.models.get_model(arch, **kwargs).eval()
        shapes = TORCHVISION_TASKS[task]
        torch.manual_seed(0)
        if shapes == "images":
            return module, ([torch.rand(3, 320, 320)],)
        return module, tuple(torch.rand(*shape) for shape in shapes)
    return zoo.get(name).build()


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


def check(name: str) -> dict[str, Any]:
    """Everything measured of one architecture (in this process)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.readfloor import floor_s
    from toolkit import api, zoo
    from toolkit.blocks import find_blocks
    from toolkit.costs import build_cost_graph
    from toolkit.onnx import read_onnx
    from toolkit.partition import solve

    warnings.filterwarnings("ignore")
    out: dict[str, Any] = {"model": name, "exporter": "torchscript"}
    module, args = build(name)
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
            zoo.export_pytorch(module, args, path, "torchscript")
        except Exception as exc:
            out["torchscript_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            out["exporter"] = "dynamo"
            zoo.export_pytorch(module, args, path, "dynamo")
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


def _measured(fam: str, name: str) -> dict[str, Any]:
    """`check` in a fresh process (memory and imports of one model do not reach the next)."""
    try:
        done = subprocess.run([sys.executable, "-m", "bench.unseen", "--one", name],
                              capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT)
        lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
        row = json.loads(lines[-1]) if lines else {
            "model": name, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
    except subprocess.TimeoutExpired:
        row = {"model": name, "error": f"over {TIMEOUT_S} s"}
    return {"family": fam, "source": name.split(":", 1)[0], **row}


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.4f}" if a is not None and b else "-"


def _summary(source: str, rows: list[dict[str, Any]]) -> str:
    """One source's results in a sentence."""
    ok = [r for r in rows if "error" not in r]
    counted = [r for r in ok if r.get("oracle_macs")]
    same_macs = sum(abs(r["macs"] / r["oracle_macs"] - 1) <= 1e-6 for r in counted)
    same_params = sum(r["params"] == r["oracle_params"] for r in ok)
    exact = sum(abs(r["blockwise_ms"] - r["general_ms"]) <= 1e-9 * max(1.0, r["general_ms"])
                for r in ok)
    ratios = sorted(r["read_s"] / r["floor_s"] for r in ok)
    return (f"**{source}**: of {len(rows)} architectures, {len(ok)} read and solved. MACs equal "
            f"torch's count for {same_macs} of the {len(counted)} it could count; trainable "
            f"parameters equal for {same_params} of {len(ok)}; the block-wise optimum equals "
            f"the general min cut for {exact} of {len(ok)}. `read` / floor: median "
            f"{ratios[len(ratios) // 2] if ratios else 0:.1f}x, "
            f"{sum(x <= 2 for x in ratios)} of {len(ratios)} within 2x, the most "
            f"{max(ratios, default=0):.1f}x.")


def write(rows: list[dict[str, Any]]) -> None:
    doc = Doc()
    doc.add("# Architectures the toolkit was not built on")
    doc.add()
    doc.add(f"Generated by `python -m bench.unseen` on {time.strftime('%Y-%m-%d')}. Machine: "
            f"{machine()}.")
    doc.add()
    doc.add((__doc__ or "").split("\n\n", 1)[1].strip())
    doc.add()
    for source in SOURCES:
        mine = [r for r in rows if r.get("source", "timm") == source]
        if mine:
            doc.add(_summary(source, mine))
            doc.add()
    doc.add("Where `read` is far above the floor, the file is small (the two-layer transformers' "
            "floors are a few milliseconds, and the per-node Python work outweighs parsing) or "
            "its sizes depend on the data (the detectors: one onnxruntime run learns them). "
            "Where MACs or parameters differ, [the findings below](#what-the-differences-are) "
            "say why.")
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
    doc.add()
    doc.add(FINDINGS)
    OUT.write_text("\n".join(doc.lines) + "\n")
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


FINDINGS = """## What the differences are

Read from the rows above, model by model (a difference is a finding only once its cause is
known):
- parameters short by a pooler (a dense layer of width x width plus its bias: 65,792 at width
  256, 590,592 at SqueezeBERT's 768), a mask token (XLNet), a pooled layer norm (ConvNeXt,
  BEiT) or a feature projection's norm (the wav2vec2 family's -256): parts the graph never
  reads, so the exporter prunes them (the same for MACs: a pooler's product, -0.04%);
- Longformer and LED short by their global-attention projections, unused without global
  tokens; Switch Transformers by the experts no token was routed to (the traced graph holds
  the experts the example's routing used); LeViT by its attention biases, which the module
  in eval mode reads from a cache it made of them, a constant to the tracer (an
  export of the module in train mode reads them);
- a row's error is the exporter's or the architecture's own (both exporters refuse it, or
  transformers cannot build it from its default config), never the toolkit's;
- an export that onnxruntime itself cannot run leaves sizes unknown after the probe run, and
  the note says why: TorchScript's CANINE (one Transpose of the keys with the inverse of the
  permutation the code asks for) and TorchScript's MViTs (the Loop and If nodes of their
  scripted pooling fail in onnxruntime; the dynamo export of MViT-V2-S reads with torch's MACs
  and parameters exactly, 2,076 layers, in a hand run of the same checks);
- a detector's sizes after its region proposals depend on the data, so its `read` includes
  the onnxruntime run that learns them (Mask R-CNN: 2.5 s of a 3.3 s read under the
  profiler), and MACs may differ where the heads run once per box (Keypoint R-CNN: the probe
  run's image is zeros, torch's count ran on noise); non-maximum suppression is charged a
  guess."""


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--one", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--source", nargs="+", choices=SOURCES, default=list(SOURCES),
                        help="the sources to run (default all); the others keep their rows")
    parser.add_argument("--doc-only", action="store_true",
                        help="rewrite docs/unseen.md from bench/results/unseen.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(check(args.one), default=str))
        return
    kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if args.doc_only:
        write(kept)
        return
    rows = [r for r in kept if r.get("source", "timm") not in args.source]
    for source in args.source:
        chosen = candidates(source)
        for k, (fam, name) in enumerate(chosen.items(), start=1):
            rows.append(_measured(fam, name))
            print(f"{source} {k}/{len(chosen)} {json.dumps(rows[-1], default=str)[:160]}",
                  flush=True)
    rows.sort(key=lambda r: (SOURCES.index(r.get("source", "timm")), r["family"]))
    write(rows)


if __name__ == "__main__":
    main()
