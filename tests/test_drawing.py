"""`splitcut show`: a picture of the partition that says what the report says."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import chain, run_main, save
from toolkit import zoo
from toolkit.drawing import CROSSING, PALETTE
from toolkit.store import Connection, Store

PASSWORD = os.environ.get("NEO4J_PASSWORD", "splitcut-dev")
SVG = "{http://www.w3.org/2000/svg}"


def _drawn(path: Path) -> tuple[str, set[str], list[str]]:
    """The SVG's title text, the fill colours of its boxes, and the labels of its red edges."""
    root = ET.parse(path).getroot()
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    fills = {p.get("fill", "").lower() for p in root.iter(f"{SVG}path")} | {
        p.get("fill", "").lower() for p in root.iter(f"{SVG}polygon")}
    crossing = []
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == "edge" and any(
                p.get("stroke", "").lower() == CROSSING.lower() for p in group.iter(f"{SVG}path")):
            crossing += ["".join(t.itertext()) for t in group.iter(f"{SVG}text")]
    return texts[0] if texts else "", fills, crossing


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_every_zoo_model_is_drawn_with_its_cut(name, tmp_path, capsys, monkeypatch):
    out = tmp_path / f"{name}.svg"
    code, stdout, err = run_main(["show", name, "--uplink", "20Mbps", "-o", str(out)], capsys,
                                 monkeypatch)
    assert code == 0, err
    headline = stdout.split("drawn to")[0]
    title, fills, crossing = _drawn(out)
    assert " ".join(title.split()) == " ".join(headline.split())  # the report's verdict
    assert PALETTE[0].lower() in fills  # the device's boxes
    if "no cut" in headline:
        assert not crossing
    else:  # the server's boxes and at least one labelled crossing edge
        assert PALETTE[1].lower() in fills and crossing
        assert all(re.fullmatch(r"[\d.]+ (B|kB|MB|GB)( \(\d+ tensors\))?", c) for c in crossing)


def test_a_cut_inside_a_block_expands_it_and_other_formats(zoo_path, tmp_path, capsys,
                                                            monkeypatch):
    model = str(zoo_path("resnet50"))
    out = tmp_path / "pinned.svg"
    code, _, err = run_main(["show", model, "--pin", "/layer1/layer1.0/conv2/Conv", "-o",
                             str(out)], capsys, monkeypatch)
    assert code == 0, err
    text = out.read_text()
    assert "the cut runs through it" in text and "layer1.0.conv2" in text  # layers drawn
    assert "layer3.0.conv2" not in text  # ... of that block only
    for suffix, magic in ((".png", b"\x89PNG"), (".html", b"<!doctype html>")):
        drawn = tmp_path / f"r50{suffix}"
        target = tmp_path / "elsewhere"
        target.write_text("keep")
        drawn.symlink_to(target)  # a planted link is replaced, not written through
        code, _, err = run_main(["partition", model, "-o", str(drawn)], capsys, monkeypatch)
        assert code == 0, err
        assert drawn.read_bytes().startswith(magic) and not drawn.is_symlink()
        assert target.read_text() == "keep"
        target.unlink()
    code, _, err = run_main(["show", model, "-o", str(tmp_path / "cut.jpg")], capsys,
                            monkeypatch)
    assert code != 0 and "give a file ending in .svg, .png, .html" in err
    assert len(err.strip().splitlines()) == 1


def test_an_external_model_through_neo4j_and_a_chain(tmp_path, capsys, monkeypatch):
    path = save(chain(12), tmp_path / "external.onnx")
    out = tmp_path / "external.svg"
    code, _, err = run_main(["show", str(path), "--name", "drawing-test", "--neo4j",
                             "--password", PASSWORD, "--uplink", "1Mbps", "-o", str(out)],
                            capsys, monkeypatch)
    assert code == 0, err
    title, fills, _ = _drawn(out)
    assert title.startswith("drawing-test:") and PALETTE[0].lower() in fills
    with Store(Connection.from_env(password=PASSWORD)) as store:
        assert store.delete_model("drawing-test")
    out = tmp_path / "chain.svg"
    examples = Path(__file__).resolve().parent.parent / "examples" / "device-edge-cloud.toml"
    code, _, err = run_main(["show", str(zoo.export("resnet18")), "--tiers",
                                  str(examples), "-o", str(out)], capsys, monkeypatch)
    assert code == 0, err
    title, fills, crossing = _drawn(out)
    assert "on the edge" in title and {PALETTE[0].lower(), PALETTE[1].lower()} <= fills
    assert crossing
