"""Every optimal partition across a link's rate: the envelope against independent solves."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import random
import re
from fractions import Fraction

import jsonschema
import numpy as np
import pytest

from tests.helpers import run_main, schema
from toolkit import api
from toolkit.costgraph import delay
from toolkit.costs import build_cost_graph
from toolkit.partition import solve
from toolkit.partition.sweep import lookup, lower_envelope
from toolkit.tiergraph import tier_delay

# the envelope itself, on lines with ties, parallels and duplicates ----------------------------

def _random_lines(rng: random.Random) -> list[tuple[Fraction, Fraction]]:
    """A few lines a + b x with small integer coefficients: many ties and parallels."""
    lines = [(Fraction(rng.randint(0, 12)), Fraction(rng.randint(0, 6)))
             for _ in range(rng.randint(1, 9))]
    return lines + [rng.choice(lines) for _ in range(rng.randint(0, 3))]  # duplicates


@pytest.mark.parametrize("seed", range(3))
def test_lower_envelope_equals_the_exact_minimum_of_random_lines(seed):
    """Exact rational arithmetic: every piece's line is the minimum across its interval (at its
    ends and middle), the pieces tile the range, and every point where the minimum changes line
    is a breakpoint."""
    rng = random.Random(seed)
    for _ in range(500):
        lines = _random_lines(rng)
        lo, hi = sorted(Fraction(rng.randint(0, 40), rng.randint(1, 8)) for _ in range(2))

        def value(k: int, x: Fraction, lines=lines) -> Fraction:
            return lines[k][0] + lines[k][1] * x

        def optimum(x: Fraction, lines=lines, value=value) -> tuple[int, Fraction]:
            k = rng.choice([k for k in range(len(lines))
                            if value(k, x) == min(value(j, x) for j in range(len(lines)))])
            return k, value(k, x)  # any of the tied optima: the envelope must not care

        pieces = lower_envelope(lo, hi, optimum, value, tol=0)
        assert pieces[0].lo == lo and pieces[-1].hi == hi
        for a, b in itertools.pairwise(pieces):
            assert a.hi == b.lo and lines[a.key] != lines[b.key]
        for p in pieces:
            for x in (p.lo, (p.lo + p.hi) / 2, p.hi):
                assert value(p.key, x) == min(value(j, x) for j in range(len(lines)))
        # the minimum is linear between breakpoints: no line dips below a piece inside it
        for p in pieces:
            for j in range(len(lines)):
                assert value(j, p.lo) >= value(p.key, p.lo) or value(j, p.hi) >= value(p.key,
                                                                                       p.hi)
        starts = [p.lo for p in pieces]
        for x in (lo, hi, lo + (hi - lo) / 3):
            assert lookup(pieces, starts, x).lo <= x <= lookup(pieces, starts, x).hi


# on real models, against dense sampling with an independent solver ---------------------------

def _dense_check(graph, scenario, parameter: str, low: float, high: float, samples: int) -> int:
    """Every sampled rate's optimum (the two-sided max-flow solver, from a cost graph built
    afresh) equals the envelope there, and wherever the optimum at one sample is beaten at the
    next there is a breakpoint between. Returns the number of optimum changes seen."""
    result = api.sweep_model(graph, scenario, parameter, low, high)
    rates = np.geomspace(low, high, samples)
    changes = 0
    previous = None
    for rate in rates:
        up = rate if parameter in ("uplink", "rate") else scenario.uplink_bps
        down = rate if parameter in ("downlink", "rate") else scenario.downlink_bps
        costs = build_cost_graph(graph, dataclasses.replace(
            scenario, uplink_bps=float(up), downlink_bps=float(down), link=None))
        best = solve(costs, "general", with_baselines=False)
        piece = result.policy(float(rate))
        on_envelope = api.tier_costs(graph, ["device", "server"], [dataclasses.replace(
            scenario, uplink_bps=float(up), downlink_bps=float(down), link=None)])
        value = tier_delay(on_envelope, np.array(piece.key)).total
        assert value == pytest.approx(best.delay.total, rel=1e-9, abs=1e-9), rate
        if previous is not None:
            prev_rate, prev_device = previous
            if delay(costs, prev_device).total > best.delay.total * (1 + 1e-9):
                changes += 1  # the earlier optimum is beaten here: a breakpoint in between
                assert any(prev_rate < p.lo <= rate for p in result.pieces[1:]), (prev_rate,
                                                                                  rate)
        previous = (float(rate), set(best.device))
    return changes


@pytest.mark.parametrize(("name", "parameter", "samples"), [
    ("resnet18", "uplink", 2000), ("googlenet", "rate", 1000), ("mobilenet_v2", "downlink", 300)])
def test_sweep_agrees_with_dense_sampling(zoo_path, name, parameter, samples):
    graph = api.load_graph(str(zoo_path(name)), name)
    scenario = api.make_scenario(link="wifi5", batch=8)
    changes = _dense_check(graph, scenario, parameter, 1e6, 1e9, samples)
    if parameter != "downlink":
        assert changes >= 1  # the check saw the cut move, not one partition everywhere


def test_a_u_shape_sweep_moves_both_links_and_stays_exact(zoo_path):
    graph = api.load_graph(str(zoo_path("resnet18")), "resnet18")
    scenario = api.make_scenario(link="wifi5", batch=8)
    result = api.sweep_model(graph, scenario, "uplink", 1e6, 1e9,
                             chain=api.make_chain(scenario, u_shape=True))
    assert len(result.pieces) >= 2
    for rate in np.geomspace(1e6, 1e9, 60):
        rated = dataclasses.replace(scenario, uplink_bps=float(rate), link=None)
        best = api.partition_tiers(graph, *api.make_chain(rated, u_shape=True), "general")
        key = np.array(result.policy(float(rate)).key)
        assert tier_delay(best.graph, key).total == pytest.approx(best.delay.total, rel=1e-9)


def test_sweeps_of_random_models_equal_brute_force_at_every_sampled_rate():
    """The exactness tests' random models (model inputs read late, layers weights alone make,
    repeated blocks), costed by the delay model: at 25 rates across the range, the policy's
    partition (two tiers or a U-shape, block-wise or general) is the least delay over every
    valid tiering."""
    from tests.test_exactness import random_dag, repeated_blocks
    from toolkit.errors import PartitionError
    from toolkit.tiergraph import check_tiers

    rng = np.random.default_rng(31)
    moved = checked = 0
    while checked < 24:
        graph = random_dag(rng, late_inputs=0.3) if checked % 2 else repeated_blocks(rng)[0]
        if len(graph) > 9:
            continue
        scenario = api.make_scenario("raspberry-pi-4", "h100", link=None, uplink="20Mbps",
                                     downlink="50Mbps", latency=f"{rng.choice([0, 0.1])}ms",
                                     batch=int(rng.choice([8, 256])))
        chain = api.make_chain(scenario, u_shape=True) if checked % 3 == 0 else None
        parameter = str(rng.choice(["uplink", "downlink", "rate"]))
        result = api.sweep_model(graph, scenario, parameter, 1e4, 1e11,
                                 str(rng.choice(["blockwise", "general"])), chain=chain)
        names, boundaries = chain or (["device", "server"], [scenario])
        for rate in np.geomspace(1e4, 1e11, 25):
            up = parameter in ("uplink", "rate")
            down = parameter in ("downlink", "rate")
            links = [dataclasses.replace(b, link=None, uplink_bps=float(rate) if (
                up, down)[k] else b.uplink_bps, downlink_bps=float(rate) if (down, up)[k]
                else b.downlink_bps) for k, b in enumerate(boundaries)]
            costs = api.tier_costs(graph, names, links)
            best = float("inf")
            for tier in itertools.product(range(costs.k), repeat=len(graph)):
                with contextlib.suppress(PartitionError):
                    best = min(best, check_tiers(costs, np.array(tier)).total)
            key = np.array(result.policy(float(rate)).key)
            assert tier_delay(costs, key).total == pytest.approx(best, rel=1e-9, abs=1e-9)
        moved += len(result.pieces) > 1
        checked += 1
    # the optimum changed along the range, not one cut everywhere (6 of these 24 move: most
    # random models pin much of themselves to the device with their raw data)
    assert moved >= 5, moved


def test_batch_sweep_solves_every_batch(zoo_path):
    graph = api.load_graph(str(zoo_path("mobilenet_v2")), "mobilenet_v2")
    scenario = api.make_scenario(link="lte", batch=1)
    result = api.sweep_model(graph, scenario, "batch", 1, 24)
    assert result.solves == 24 and result.pieces[0].lo == 1 and result.pieces[-1].hi == 24
    for batch in range(1, 25):
        batched = dataclasses.replace(scenario, batch=batch)
        best = api.partition_model(graph, batched, "general")
        key = np.array(result.policy(batch).key)
        costs = api.tier_costs(graph, ["device", "server"], [batched])
        assert tier_delay(costs, key).total == pytest.approx(best.delay.total, rel=1e-9)


def test_sweep_cli_json_plot_and_errors(zoo_path, tmp_path, capsys, monkeypatch):
    model = str(zoo_path("resnet18"))
    plot = tmp_path / "out" / "sweep.png"
    plot.parent.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    plot.symlink_to(target)  # a planted link is replaced, never written through
    code, out, err = run_main(["sweep", model, "--uplink", "1Mbps..1Gbps", "--plot", str(plot),
                               "--json"], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    jsonschema.validate(data, schema("sweep"))
    assert data["parameter"] == "uplink" and data["pieces"][0]["from"] == 1e6
    assert [p["to"] for p in data["pieces"][:-1]] == [p["from"] for p in data["pieces"][1:]]
    assert target.read_text() == "keep" and not plot.is_symlink()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run_main(["sweep", model, "--uplink", "1Mbps..1Gbps"], capsys, monkeypatch)
    assert code == 0 and "every optimal partition across the uplink rate" in " ".join(out.split())
    assert re.search(r"\d+ intervals from \d+ exact solves \(", " ".join(out.split()))
    code, out, err = run_main(["sweep", model, "--uplink", "1Mbps..1Mbps"], capsys, monkeypatch)
    assert code == 0 and re.search(r"\b1 interval from \d+ exact solves? \(", " ".join(out.split()))
    for args, message in [
        ([], "give one range"),
        (["--uplink", "1Mbps..1Gbps", "--downlink", "2Mbps..1Gbps"], "give one range"),
        (["--uplink", "1Mbps..fast"], "cannot read rate"),
        (["--uplink", "1Gbps..1Mbps"], "low <= high"),
        (["--batches", "8"], "LOW..HIGH"),
        (["--uplink", "1Mbps..1Gbps", "--tiers", "examples/device-edge-cloud.toml",
          "--boundary", "5"], "boundaries 0..1"),
    ]:
        code, _, err = run_main(["sweep", model, *args], capsys, monkeypatch)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
