"""The zoo's sources: architectures from torchvision, timm and transformers by name, block
types named after what their instances share, and ingests that skip what they cannot read."""

from __future__ import annotations

import json
import uuid
import warnings

import onnx
import pytest
from onnx import helper

from tests.helpers import chain, model, run_main, save, vi, weight
from toolkit import api, zoo
from toolkit.blocks import find_blocks
from toolkit.errors import ModelError
from toolkit.onnx import read_onnx
from toolkit.store import Connection, Store

pytestmark = pytest.mark.zoo
torch = pytest.importorskip("torch")
TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 1000}


def test_sources_resolve_names_families_and_clear_errors():
    assert zoo.get("squeezenet1_1").family == "squeezenet"  # any torchvision classifier
    assert zoo.get("torchvision:resnet18") is zoo.MODELS["resnet18"]
    assert zoo.get("timm:test_vit").family == "vision_transformer"
    assert zoo.get("hf:llama").family == "llama"
    assert len(zoo.names("torchvision")) >= 80
    assert {"hf:bert", "hf:gpt2", "hf:llama", "hf:t5", "hf:whisper", "hf:vit",
            "hf:wav2vec2"} <= set(zoo.names("hf"))
    assert zoo.get("hf:whisper").family == "whisper"
    for bad, says in (("timm:no_such_net", "unknown timm architecture"),
                      ("hf:no_such_preset", "neither a preset"),
                      ("torchvision:no_such_net", "unknown zoo model"),
                      ("no_such_net", "unknown zoo model")):
        with pytest.raises(ModelError, match=says):
            zoo.get(bad)


def test_a_limit_samples_the_whole_list_evenly():
    items = [f"m{i}" for i in range(10)]
    assert zoo.sample(items, 3) == ["m0", "m3", "m6"]
    assert zoo.sample(items, 10) == items and zoo.sample(items, None) == items
    picked = api.expand_models((), "timm", limit=4, match=("test_vit*", "test_convnext*"))
    offered = [n for n in zoo.names("timm") if n.startswith(("timm:test_vit", "timm:test_conv"))]
    assert len(offered) > 4 and list(picked) == zoo.sample(offered, 4) and picked[0] == offered[0]


def test_a_transformers_config_file_builds_and_exports(tmp_path):
    config = tmp_path / "tiny" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(TINY_LLAMA))
    model = zoo.get(f"hf:{config}")
    assert model.family == "llama" and model.short_name == "hf:tiny"
    # configs side by side in one folder are models of their own names (all were 'hf:configs')
    for stem in ("small", "wide"):
        (tmp_path / "configs").mkdir(exist_ok=True)
        (tmp_path / "configs" / f"{stem}.json").write_text(json.dumps(TINY_LLAMA))
    assert [zoo.get(f"hf:{tmp_path}/configs/{stem}.json").short_name
            for stem in ("small", "wide")] == ["hf:small", "hf:wide"]
    path = zoo.export(f"hf:{config}", tmp_path / "out")
    stem = model.file_stem
    graph = read_onnx(path, model.short_name)
    assert sum(layer.op == "MatMul" for layer in graph) >= 2 * 7  # q k v o gate up down
    # TorchScript's metadata says 'model' for every node here; the scoped names say where
    assert "model.model.layers.1.mlp.down_proj" in {layer.module for layer in graph}
    repeated = [t for t in find_blocks(graph).types if t.count == 2 and t.size > 1]
    assert repeated and all("model.model.layers.N" in t.name and "ForCausalLM" not in t.name
                            for t in repeated), [t.name for t in repeated]
    config.write_text(json.dumps({**TINY_LLAMA, "num_hidden_layers": 3}))
    assert zoo.get(f"hf:{config}").file_stem != stem  # an edited config re-exports
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a transformers config"):
        zoo.get(f"hf:{tmp_path / 'bad.json'}")


TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4}


@pytest.mark.parametrize(("config", "raw_rank", "wanted"), [
    # an image model reads pixels: (1, channels, height, width) at the config's size
    ({"model_type": "vit", **TINY, "image_size": 32, "patch_size": 8, "num_channels": 1},
     4, {"Conv"}),
    # an encoder-decoder also runs its decoder (on a fixed prompt): both halves' layers
    ({"model_type": "t5", "vocab_size": 100, "d_model": 32, "d_ff": 64, "num_layers": 1,
      "num_heads": 4, "d_kv": 8}, 2, {"encoder", "decoder"}),
    # audio samples; position tables shorter than the default prompt shorten it
    ({"model_type": "wav2vec2", **TINY, "conv_dim": [16, 16], "conv_stride": [5, 2],
      "conv_kernel": [10, 3], "num_conv_pos_embeddings": 16,
      "num_conv_pos_embedding_groups": 4}, 2, {"Conv"}),
    ({"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 4, "n_positions": 40,
      "vocab_size": 100}, 2, {"MatMul"}),
    # a detector whose decoder reads learned queries (no prompt), on a frozen backbone
    ({"model_type": "detr", "use_pretrained_backbone": False, "use_timm_backbone": False,
      "backbone_config": {"model_type": "resnet", "depths": [1, 1, 1, 1], "layer_type": "basic",
                          "hidden_sizes": [8, 16, 32, 64], "embedding_size": 8,
                          "out_features": ["stage4"]},
      "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 4,
      "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
      "num_queries": 5}, 4, {"Conv", "decoder"}),
])
def test_a_transformers_config_is_fed_what_its_model_reads(tmp_path, config, raw_rank, wanted):
    path = tmp_path / config["model_type"] / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    exported = zoo.export(f"hf:{path}", tmp_path / "out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = read_onnx(exported, "m")
    assert not caught  # folding T5's log(0) -> -inf (masked out, as at run time) is quiet
    (raw,) = graph.inputs
    assert len(graph.tensors[raw].shape) == raw_rank
    if config["model_type"] == "vit":
        assert graph.tensors[raw].shape == (1, 1, 32, 32)
    if config["model_type"] == "gpt2":
        assert graph.tensors[raw].shape == (1, 40)  # n_positions, not the default 128
    if config["model_type"] == "detr":  # its backbone is frozen (buffers and parameters)
        assert next(layer for layer in graph if layer.trainable).module == \
            "model.input_projection"
    seen = {layer.op for layer in graph} | {
        part for layer in graph for part in (layer.module or "").split(".")}
    assert wanted <= seen


def test_a_train_mode_export_keeps_every_layer_layerdrop_would_skip(tmp_path):
    """LayerDrop skips each encoder layer at random in train mode (here always: p = 1), so a
    trace would hold none of them; a train-mode export holds them all, as the step that skips
    none runs them (its time and memory are the ones that must fit)."""
    config = tmp_path / "dropping" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({
        "model_type": "wav2vec2", **TINY, "conv_dim": [16, 16], "conv_stride": [5, 2],
        "conv_kernel": [10, 3], "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4, "layerdrop": 1.0}))
    module, _ = zoo.get(f"hf:{config}").build()
    module.train()
    zoo.keep_every_layer(module)
    assert all(getattr(part.config, "layerdrop", 0.0) == 0.0
               for part in module.modules() if hasattr(part, "config"))
    graph = read_onnx(zoo.export(f"hf:{config}", tmp_path / "out", training=True), "dropping")
    layers = {m.split("encoder.layers.")[1].split(".")[0] for layer in graph
              if (m := layer.module or "") and "encoder.layers." in m}
    assert layers == {"0", "1"}


def test_a_transformers_model_reading_what_the_zoo_cannot_make_is_one_clear_error(tmp_path):
    path = tmp_path / "s2t" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"model_type": "speech_to_text", "vocab_size": 100,
                                "d_model": 32, "encoder_layers": 1, "decoder_layers": 1}))
    with pytest.raises(ModelError, match=r"reads 'input_features'.*token ids, images"):
        zoo.export(f"hf:{path}", tmp_path / "out")


def test_a_timm_architecture_names_its_block_types_after_its_classes(tmp_path):
    path = zoo.export("timm:test_vit", tmp_path)
    structure = find_blocks(read_onnx(path, "test_vit"))
    repeated = [t for t in structure.types if t.count == max(t.count for t in structure.types)]
    assert repeated and all(t.name.split()[0] == "Block" for t in repeated)  # timm's Block


class ResBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


class Stage(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = ResBlock()

    def forward(self, x):
        return self.block(x)


class UNetish(torch.nn.Module):
    """The same block under three paths of two depths: inc.block, up.0.block, tail.block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 1)
        self.inc = Stage()
        self.up = torch.nn.Sequential(Stage())
        self.tail = Stage()

    def forward(self, x):
        return self.tail(self.up(self.inc(self.stem(x))))


@pytest.mark.parametrize("annotated", [False, True])
def test_a_type_is_named_after_what_all_its_instances_share(tmp_path, annotated):
    """A plain TorchScript export knows module paths only: the type is named by the pattern
    of its instances' paths (`*.block`), not by the first one (`inc.block`); exported through
    `export_pytorch`, by their class."""
    module, args = UNetish().eval(), (torch.randn(1, 3, 8, 8),)
    path = tmp_path / "unetish.onnx"
    if annotated:
        zoo.export_pytorch(module, args, path)
    else:
        zoo.export_module(torch, module, args, path, "torchscript")
    assert any(p.key.startswith("pkg.torch.onnx")
               for n in onnx.load(path).graph.node for p in n.metadata_props) == annotated
    structure = find_blocks(read_onnx(path, "unetish"))
    [block] = [t for t in structure.types if t.count == 3 and t.size > 1]
    assert block.name == ("ResBlock" if annotated else "*.block")


class Nested(torch.nn.Module):
    """A wrapper whose `model` holds a model whose `model` holds the blocks (as transformers'
    ...ForCausalLM in a wrapper), and a ModuleList inside a ModuleList element (crossvit)."""

    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.model = Nested(depth - 1) if depth > 1 else None
        self.blocks = torch.nn.ModuleList(
            [torch.nn.ModuleList([torch.nn.Sequential(ResBlock())])] if depth == 1 else [])

    def forward(self, x):
        if self.model is not None:
            return self.model(x)
        return self.blocks[0][0](x)


def test_module_paths_keep_a_name_nested_in_itself(tmp_path):
    path = tmp_path / "nested.onnx"
    zoo.export_module(torch, Nested(3).eval(), (torch.randn(1, 4, 8, 8),), path, "torchscript")
    modules = {layer.module for layer in read_onnx(path, "nested")}
    assert "model.model.blocks.0.0.0.conv1" in modules, modules


class ShapeChecking(torch.nn.Module):
    """Branches on a size, as transformers' modules do: the tracer warns it fixes the branch."""

    def forward(self, x):
        return torch.relu(x) if x.shape[-1] > 2 else x


def test_an_export_at_one_fixed_example_does_not_warn_about_others(tmp_path):
    noted = (torch.jit.TracerWarning, UserWarning)  # (deprecations are hidden by default)

    def warned(work):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            work()
        return [w.category for w in caught if issubclass(w.category, noted)]

    assert not warned(lambda: zoo.export_module(
        torch, ShapeChecking(), (torch.randn(1, 4),), tmp_path / "a.onnx", "torchscript"))
    assert torch.jit.TracerWarning in warned(  # the sentinel: tracing it does warn
        lambda: torch.jit.trace(ShapeChecking(), (torch.randn(1, 4),)))
    assert "Relu" in {n.op_type for n in onnx.load(tmp_path / "a.onnx").graph.node}


@pytest.mark.parametrize(("exporter", "other"), [("torchscript", "dynamo"),
                                                 ("dynamo", "torchscript")])
def test_a_failed_export_is_one_line_that_names_the_other_exporter(tmp_path, monkeypatch,
                                                                   exporter, other):
    def fails(*_):  # as torch fails on some models (timm's EVA-02 under TorchScript)
        raise TypeError("argument 'is_causal' must be bool, not Tensor\n  at line 2 of a trace")

    monkeypatch.setattr(zoo, "export_pytorch", fails)
    with pytest.raises(ModelError) as caught:
        zoo.export("timm:test_vit", tmp_path, exporter=exporter)
    message = str(caught.value)
    assert "\n" not in message and "is_causal" in message
    assert message.endswith(f"(the {other} exporter may get further: --exporter {other})")
    assert not list(tmp_path.glob("*.onnx"))  # nothing half-written left behind


class Histogram(torch.nn.Module):
    """An operator TorchScript cannot export (Mixtral's router counts tokens so)."""

    def forward(self, x):
        return torch.histc(x, bins=4) + 1


def test_an_operator_without_export_fails_in_one_line_and_prints_nothing(tmp_path, capfd):
    with pytest.raises(torch.onnx.errors.UnsupportedOperatorError) as caught:
        zoo.export_module(torch, Histogram(), (torch.randn(8),), tmp_path / "h.onnx",
                          "torchscript")
    out, _ = capfd.readouterr()
    assert out == ""  # torch's C++ prints the graph it was building on fd 1: held, dropped
    assert zoo.export_failure(caught.value).startswith(
        "UnsupportedOperatorError: Exporting the operator 'aten::histc'")
    print("after")  # standard output works again
    assert capfd.readouterr().out == "after\n"


class Chatty(torch.nn.Module):
    def forward(self, x):
        print("traced")  # what a module prints while exported is passed on, not lost
        return x + 1


def test_what_an_export_that_succeeds_prints_is_passed_on(tmp_path, capfd):
    zoo.export_module(torch, Chatty(), (torch.randn(2),), tmp_path / "c.onnx", "torchscript")
    assert capfd.readouterr().out == "traced\n"


def test_a_dynamo_failure_is_told_by_its_cause_not_its_step(tmp_path):
    # (a name of its own each run: torch keeps an operator registered for the process)
    @torch.library.custom_op(f"splitcut_test::twice_{uuid.uuid4().hex}", mutates_args=())
    def twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @twice.register_fake
    def _(x):
        return torch.empty_like(x)

    class Custom(torch.nn.Module):
        def forward(self, x):
            return twice(x) + 1

    with pytest.raises(Exception) as caught:
        zoo.export_module(torch, Custom(), (torch.randn(3),), tmp_path / "c.onnx", "dynamo")
    assert "step 3/3" in str(caught.value)  # the sentinel: what the message opens with
    reason = zoo.export_failure(caught.value)
    assert reason.startswith("DispatchError: No ONNX function found") and "twice" in reason
    assert "\n" not in reason and "\x1b" not in reason


def test_ingest_skips_what_it_cannot_read_and_says_so(tmp_path, capsys, monkeypatch):
    good = save(chain(3), tmp_path / "corpus_good.onnx")
    bad = tmp_path / "corpus_bad.onnx"
    bad.write_bytes(b"\x08\x07 not a model")
    code, out, err = run_main(["ingest", str(good), str(bad), "--zoo", "reference", "--match",
                               "resnet1?", "--json"], capsys, monkeypatch)
    assert code == 1, err
    rows = {row["model"]: row for row in json.loads(out)}
    assert set(rows) == {"resnet18", str(good), str(bad)}
    assert rows[str(bad)]["status"] == "skipped" and "corpus_bad.onnx" in rows[str(bad)]["reason"]
    assert rows[str(good)]["status"] in ("created", "replaced", "unchanged")
    with Store(Connection.from_env()) as store, store.driver.session() as session:
        families = {r["name"]: r["family"] for r in session.run(
            "MATCH (m:Model) WHERE m.name IN $names RETURN m.name AS name, m.family AS family",
            names=["resnet18", "corpus_good"])}
    assert families == {"resnet18": "resnet", "corpus_good": None}
    code, out, _ = run_main(["ingest", str(good), str(bad)], capsys, monkeypatch)
    assert code == 1
    assert "skipped" in out and "ingested 1 of 2 models (1 unchanged)" in " ".join(out.split())


def test_ingest_gives_every_model_that_has_it_the_dimension_dim_names(
        tmp_path, capsys, monkeypatch):
    """`ingest --dim` (the skipped model's reason asks for one) reaches each model that has
    the dimension; the others ignore it."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    seq = save(model(nodes, [vi("x", [1, "seq", 8])], [vi("y", [1, "seq", 8])],
                     [weight("w", 8, 8)]), tmp_path / "ingest_dims_seq.onnx")
    plain = save(chain(2), tmp_path / "ingest_dims_plain.onnx")
    code, out, _ = run_main(["ingest", str(seq), "--json"], capsys, monkeypatch)
    row = json.loads(out)[0]
    assert code == 1 and row["status"] == "skipped" and "--dim seq=128" in row["reason"]
    code, out, err = run_main(["ingest", str(seq), str(plain), "--dim", "seq=16", "--json"],
                              capsys, monkeypatch)
    assert code == 0, err
    assert {r["status"] for r in json.loads(out)} <= {"created", "replaced", "unchanged"}
    with Store(Connection.from_env()) as store, store.driver.session() as session:
        stored = session.run("MATCH (m:Model {name: $name})-[:HAS_LAYER]->(l:Layer {name: 'mm'}) "
                             "WHERE l.version = m.version RETURN l.out_bytes AS bytes",
                             name="ingest_dims_seq").single()
    assert stored is not None and stored["bytes"] == 16 * 8 * 4


def test_weights_too_large_for_one_file_go_beside_it(tmp_path, monkeypatch):
    """Protobuf cannot parse a file of 2 GB or more: an export with more weights than
    `INLINE_WEIGHTS` keeps them in one `.data` file beside the model (here with the limit set
    to 0 on a small model), and the reader finds them there."""
    monkeypatch.setattr(zoo, "INLINE_WEIGHTS", 0)
    path = zoo.export("squeezenet1_1", tmp_path)
    data = zoo.data_file(path)
    assert data.exists() and data.stat().st_size > 4 * 1_000_000 > path.stat().st_size
    module, _ = zoo.get("squeezenet1_1").build()
    assert read_onnx(path, "s").total_params == sum(p.numel() for p in module.parameters())


def test_a_new_export_drops_the_caches_older_ones_of_the_model(tmp_path, monkeypatch):
    """An export made by another export version or torch is never read again: the cache
    keeps the new one only (each can hold gigabytes), and nothing of another model, exporter
    or mode."""
    monkeypatch.setenv("SPLITCUT_CACHE", str(tmp_path))
    cache = zoo.cache_dir()
    cache.mkdir(parents=True)
    stale = ["squeezenet1_1.v1.torch2.0.0.onnx", "squeezenet1_1.v2.torch2.15.0.onnx",
             "squeezenet1_1.v2.torch2.15.0.onnx.data"]
    kept = ["squeezenet1_1.dynamo.v2.torch2.15.0.onnx", "squeezenet1_1.train.v2.1.torch2.0.onnx",
            "squeezenet1_1x.v2.torch2.15.0.onnx", "squeezenet1_1.v2.torch2.15.0.onnx.txt"]
    for name in stale + kept:
        (cache / name).write_text("old")
    path = zoo.export("squeezenet1_1")
    assert path.parent == cache and path.name not in stale
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.name, *kept])


@pytest.mark.parametrize("name", ["hf:gpt_neox", "torchvision:lraspp_mobilenet_v3_large"])
def test_the_unseen_benchmark_checks_an_architecture_against_torch(name):
    """`bench.unseen` builds an architecture outside the corpus (a transformers type shrunk
    from its default config, a torchvision task model), exports it as the zoo does and
    measures it against torch's own counts: the sizes its page reports are the toolkit's and
    torch's, each measured."""
    from bench import unseen

    row = unseen.check(name)
    assert row["exporter"] == "torchscript" and row["layers"] > 50
    assert row["macs"] == pytest.approx(row["oracle_macs"], rel=1e-9) and row["macs"] > 1e6
    assert row["params"] == row["oracle_params"] > 1e5
    assert row["blockwise_ms"] == pytest.approx(row["general_ms"], rel=1e-9)
    assert row["floor_s"] > 0 and row["read_s"] > 0
