"""Split training with the server on a GPU, against the delay model: one prepared run for a
lent GPU machine, then its document here.

    python -m bench.gpu_split --out DIR        # on the GPU machine (about 5 minutes)
    python -m bench.gpu_split --doc JSON...    # here: runs' gpu-split.json -> docs/gpu-split.md

On the GPU machine it runs, each phase writing its results into DIR at once:
1. `tests/test_train_devices.py` (the executor on CUDA equals the CPU; a split run with the
   server on the GPU learns), its log;
2. `bench.memory --cuda --measure-only`: each memory model's training step on the GPU
   (`torch.cuda.max_memory_allocated`), for `python -m bench.memory --cuda-from` to set
   beside the model's prediction here;
3. per model, per-layer times measured in the training executor on both sides (the device
   half on one CPU thread, the server half on the GPU, synchronised after each layer), then
   real split training (`train_model(..., tier_device={"server": "cuda"})`) at the optimal
   cut, the best single split and device-only, over a kernel-shaped link where the machine
   allows it (paced in the sender where not; a machine without `tc` and `ip` can be lent this
   machine's, with their libraries, on PATH), beside two predictions: (a) from the per-layer
   times, (b) from the profiles: a CPU profile calibrated to the device's times and
   `h200-measured` (fitted to PyTorch's own training steps on H200s).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fidelity import choice_line, error_table, noise_lines, run_record, run_row, said
from toolkit import api, zoo
from toolkit.calibrate import to_toml
from toolkit.costs import build_tier_graph
from toolkit.train.session import TrainError
from toolkit.train.timing import executor_profile

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["resnet18", "googlenet", "vit_b_16"]
RATES_MBPS = [20, 200]
CUTS = ["optimal", "best-single", "device-only"]
LATENCY = "2ms"
TIERS = ["device", "server"]
DEVICE, SERVER = "gpu-host-cpu", "h200-measured"  # the profiles' names
DOC = ROOT / "docs" / "gpu-split.md"


def _write(out: Path, name: str, data: Any) -> None:
    (out / name).write_text(json.dumps(data, indent=1))


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (a dry run)"
    return {"gpu": gpu, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpu": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d")}


def run_tests(out: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--noconftest", "-p", "no:cacheprovider", "-q", "-rs",
         "tests/test_train_devices.py"], cwd=ROOT, capture_output=True, text=True, check=False)
    (out / "gpu-tests.log").write_text(done.stdout + done.stderr)
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:],
          flush=True)


def profiles(model: str, work: Path, server_on: str) -> tuple[Path, Path]:
    """The model's per-layer executor times: the device's on one CPU thread, the server's on
    the GPU."""
    path, _ = zoo.resolve(model)
    graph = api.load_graph(model)
    device = work / f"{graph.name}.device.json"
    server = work / f"{graph.name}.server.json"
    device.write_text(json.dumps(executor_profile(path, graph, DEVICE).to_dict()))
    server.write_text(json.dumps(executor_profile(path, graph, SERVER, repeats=10, warmup=5,
                                                  device=server_on).to_dict()))
    return device, server


def run_split(models: list[str], rates: list[float], iterations: int, warmup: int, out: Path,
              deadline: float, server_on: str = "cuda") -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="splitcut-gpu-split-"))
    models, paced = list(models), False
    results: dict[str, Any] = {**machine(), "rates_mbps": rates, "latency": LATENCY,
                               "iterations": iterations, "warmup": warmup, "runs": [],
                               "profiles": {}}
    measured = {}
    for model in list(models):
        start = time.perf_counter()
        try:
            measured[model] = profiles(model, work, server_on)
        except Exception as exc:  # recorded; the other models go on
            print(f"{model}: cannot time its layers: {exc}", flush=True)
            results["runs"].append({"model": model, "rate_mbps": 0, "cut": "-",
                                    "error": f"per-layer times: {exc}"})
            models.remove(model)
            continue
        results["profiles"][model] = {side: json.loads(p.read_text())
                                      for side, p in zip(TIERS, measured[model], strict=True)}
        print(f"{model}: executor profiles in {time.perf_counter() - start:.0f} s", flush=True)
    fitted = api.calibrate_profile([str(d) for d, _ in measured.values()], "cpu-server", DEVICE)
    (work / f"{DEVICE}.toml").write_text(to_toml(fitted))
    results["device_profile"] = {k: v for k, v in vars(fitted).items()
                                 if isinstance(v, (int, float, str))}
    for model in models:
        graph = api.load_graph(model)
        name = graph.name
        device_only: dict[str, Any] | None = None
        for rate in rates:
            if time.monotonic() > deadline:
                print(f"{name} {rate} Mbit/s: skipped, out of time", flush=True)
                continue
            link = {"uplink": f"{rate}Mbps", "downlink": f"{rate}Mbps", "latency": LATENCY,
                    "batch": 1}
            per_layer = api.make_scenario(device=DEVICE, server=SERVER, profile_dir=str(work),
                                          measured=[str(p) for p in measured[model]], **link)
            roofline = api.make_scenario(device=DEVICE, server=SERVER, profile_dir=str(work),
                                         **link)
            costs_b = build_tier_graph(graph, TIERS, [roofline])
            for cut in CUTS:
                if cut == "device-only" and device_only is not None:
                    results["runs"].append({**device_only, "rate_mbps": rate})
                    continue
                try:
                    try:
                        result = api.train_model(model, per_layer, cut=cut,
                                                 iterations=iterations, warmup=warmup,
                                                 paced=paced, tier_device={"server": server_on})
                    except TrainError as exc:
                        if paced:
                            raise
                        print(f"kernel shaping failed ({exc}): pacing in the senders from now",
                              flush=True)
                        paced = True
                        result = api.train_model(model, per_layer, cut=cut,
                                                 iterations=iterations, warmup=warmup,
                                                 paced=paced, tier_device={"server": server_on})
                except Exception as exc:  # a failed run is a result: recorded, the rest go on
                    print(f"{name} {rate} {cut}: failed: {exc}", flush=True)
                    results["runs"].append({"model": name, "rate_mbps": rate, "cut": cut,
                                            "error": str(exc)})
                    continue
                row = {**run_record(name, rate, cut, result, costs_b, roofline),
                       "runs_on": result.runs_on, "iterations": result.iterations}
                if cut == "device-only":
                    device_only = row
                results["runs"].append(row)
                print(said(row), flush=True)
                _write(out, "gpu-split.json", results)
    _write(out, "gpu-split.json", results)
    return results


def run_memory(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "bench.memory", "--cuda", "--measure-only",
                    str(out / "memory-cuda-raw.json")], cwd=ROOT, check=False)


def write_doc(sessions: list[dict[str, Any]], tests_log: str, doc: Path) -> None:
    """docs/gpu-split.md from one or more runs on GPU machines (each run calibrates its own
    device profile from its own models' per-layer times)."""
    results = sessions[0]
    runs = [r for s in sessions for r in s["runs"] if "error" not in r]
    failed = [r for s in sessions for r in s["runs"] if "error" in r]
    models = [", ".join(s["profiles"]) for s in sessions]
    shaping = sorted({r["shaping"] for r in runs})
    lines = [
        "# Split training with the server on a GPU",
        "",
        "Generated by `python -m bench.gpu_split --doc JSON...` from the results of "
        f"{len(sessions)} run(s) of `python -m bench.gpu_split --out DIR` on a lent GPU "
        f"machine ({results['gpu']}, PyTorch {results['torch']}, CUDA {results['cuda']}, "
        f"{results['date']}; models: {'; '.join(models)}). Raw results: "
        "`bench/results/gpu-split*.json` and `.log`, `bench/results/gpu-tests.log`.",
        "",
        "Each model is trained for real by `splitcut train --tier-device server=cuda`: the "
        "device half on one CPU thread of the GPU machine's host, the server half on its GPU, "
        "two processes exchanging one message each way per iteration "
        f"({'; '.join(shaping)}), {results['latency']} one-way latency, batch 1, medians of "
        f"{results['iterations']} iterations after {results['warmup']} warm-up. Two "
        "predictions for the same cut: **(a)** from per-layer times measured in the training "
        "executor on each side (the server's synchronised with the GPU after every layer); "
        "**(b)** from the profiles, a CPU profile calibrated to the device's per-layer times "
        f"(`{DEVICE}`, each run fitted to its own models) and `{SERVER}` (fitted to "
        "PyTorch's own training steps on H200s, "
        "docs/gpu-profile.md). Cuts are chosen with (a). Errors are (predicted - measured) / "
        "measured.",
        "",
        "## The executor on the GPU",
        "",
        "`tests/test_train_devices.py` on that machine: "
        + (tests_log.strip().splitlines()[-1] if tests_log.strip() else "not run") + ".",
        "",
    ]
    for column, label in (("predicted_a_ms", "(a) measured per layer"),
                          ("predicted_b_ms", "(b) profiles")):
        lines += [f"## {label}", "", *error_table(runs, column), "", choice_line(runs, column),
                  ""]
    lines += noise_lines(runs)
    lines += ["## Every run", "",
              "| model | Mbit/s | cut | device layers | measured ms | (a) ms | (a) err | (b) ms "
              "| (b) err | server measured / (a) / (b) ms | upload measured / (a) ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"{run_row(r, 1)} {r['measured_ms']['server_ms']:.1f} / "
              f"{r['predicted_a_ms']['server_ms']:.1f} / {r['predicted_b_ms']['server_ms']:.1f} | "
              f"{r['measured_ms']['upload_ms']:.1f} / {r['predicted_a_ms']['upload_ms']:.1f} |"
              for r in runs]
    for r in failed:
        lines.append(f"| {r['model']} | {r['rate_mbps']:g} | {r['cut']} | failed: "
                     f"{r['error']} | | | | | | | |")
    doc.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="run on this (GPU) machine; results here")
    parser.add_argument("--doc", type=Path, nargs="+", metavar="JSON",
                        help="write docs/gpu-split.md from these runs' gpu-split.json")
    parser.add_argument("--tests-log", type=Path, default=ROOT / "bench/results/gpu-tests.log")
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--rates", nargs="*", type=float, default=RATES_MBPS)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=420,
                        help="start no training run after this long (from the start)")
    parser.add_argument("--phases", nargs="*", default=["tests", "split", "memory"])
    parser.add_argument("--server-on", default="cuda", help="cpu: a dry run without a GPU")
    args = parser.parse_args()
    if args.doc:
        log = args.tests_log
        write_doc([json.loads(p.read_text()) for p in args.doc],
                  log.read_text() if log.exists() else "", DOC)
        return
    if args.out is None:
        parser.error("give --out DIR (on a GPU machine) or --doc JSON...")
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    if "tests" in args.phases:
        run_tests(args.out)
    if "memory" in args.phases:  # before the training runs, which it would disturb
        run_memory(args.out)
    if "split" in args.phases:
        run_split(args.models, args.rates, args.iterations, args.warmup, args.out, deadline,
                  args.server_on)


if __name__ == "__main__":
    main()
