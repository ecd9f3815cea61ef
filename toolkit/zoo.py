"""Reference models built offline with random weights and exported to ONNX (cached).

Nothing is downloaded: torchvision architectures are built with `weights=None` and transformer
language models from their default configs. Exports keep every layer that exists in training
(BatchNorm is not folded into Conv), so the graph is the one split learning trains.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from toolkit.errors import ModelError, ToolkitError

log = logging.getLogger(__name__)

EXPORTERS = ("torchscript", "dynamo")
SEQUENCE_LENGTH = 128
# weights above this go to one external file beside the model: protobuf cannot parse a file
# of 2 GB or more (RegNetY-128GF and ViT-H/14 hold 2.5 GB)
INLINE_WEIGHTS = 1 << 30
EXPORT_VERSION = 3  # bump when export settings change, so cached files are rebuilt
TRAINING_EXPORT_VERSION = 1  # the same for train-mode exports alone (1: every layer kept)
_LAYERDROP = ("layerdrop", "encoder_layerdrop", "decoder_layerdrop")


SOURCES = ("reference", "torchvision", "timm", "hf")


@dataclass(frozen=True)
class ZooModel:
    """One architecture: which library builds it, from what, and what it takes as input.

    `source` is torchvision, timm or hf (transformers); `arch` the builder's name, an hf
    preset, or the path of a transformers `config.json`.
    """

    name: str
    source: str
    arch: str
    description: str = ""

    def build(self) -> tuple[Any, tuple[Any, ...]]:
        """The torch module (eval mode, random weights) and example inputs for export."""
        torch = _torch()
        torch.manual_seed(0)
        return _BUILDERS[self.source](self.arch)

    @property
    def config_file(self) -> Path | None:
        """The transformers config.json it is built from (`hf:PATH`), if any."""
        return Path(self.arch) if self.source == "hf" and self.arch not in HF_PRESETS else None

    @property
    def short_name(self) -> str:
        """The model's default name: the zoo name; for `hf:PATH`, the folder of a file named
        `config.json` (Hugging Face's layout: `bert-tiny/config.json`), else the file's stem
        (configs side by side, `configs/gemma2.json`, are different models)."""
        config = self.config_file
        if config is not None:
            by_folder = config.name == "config.json" and config.parent.name
            return f"hf:{config.parent.name if by_folder else config.stem}"
        return self.name

    @property
    def file_stem(self) -> str:
        """The cached export's file name: the short name in safe characters, and for a
        config file a hash of its text, so an edited config is exported again."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.short_name)
        if self.config_file is not None:
            stem += "-" + hashlib.sha256(self.config_file.read_bytes()).hexdigest()[:12]
        return stem

    @property
    def family(self) -> str:
        """The architecture family: the library module that defines it (`resnet`,
        `vision_transformer`, `efficientnet`), or the transformers model type (`bert`)."""
        if self.source == "torchvision":
            import torchvision

            return _module_family(torchvision.models.get_model_builder(self.arch).__module__)
        if self.source == "timm":
            return _module_family(_timm().models.model_entrypoint(self.arch).__module__)
        return str(_hf_config(self.arch).model_type)

    def published_macs(self) -> float | None:
        """MACs per sample that torchvision publishes for this architecture (offline metadata)."""
        if self.source != "torchvision":
            return None
        import torchvision

        weights = torchvision.models.get_model_weights(self.arch).DEFAULT
        return float(weights.meta["_ops"]) * 1e9


def _module_family(module: str) -> str:
    """'torchvision.models.resnet' -> 'resnet'."""
    return module.rsplit(".", 1)[-1]


def _vision(arch: str, description: str) -> ZooModel:
    return ZooModel(arch, "torchvision", arch, description)


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in [
        _vision("resnet18", "ResNet-18, basic residual blocks"),
        _vision("resnet50", "ResNet-50, bottleneck residual blocks"),
        _vision("resnet152", "ResNet-152, 50 bottleneck blocks"),
        _vision("vgg16", "VGG-16, a plain chain of convolutions"),
        _vision("mobilenet_v2", "MobileNetV2, inverted residuals"),
        _vision("mobilenet_v3_large", "MobileNetV3-Large, SE blocks"),
        _vision("efficientnet_b0", "EfficientNet-B0, MBConv blocks"),
        _vision("densenet121", "DenseNet-121, dense blocks (few cut vertices)"),
        _vision("googlenet", "GoogLeNet, inception modules"),
        _vision("vit_b_16", "ViT-B/16, 12 transformer encoder layers"),
        _vision("swin_t", "Swin-T, shifted-window transformer"),
        _vision("convnext_tiny", "ConvNeXt-T, modernised residual CNN"),
        ZooModel("bert_base", "hf", "bert", "BERT-base encoder, 12 layers, seq 128"),
        ZooModel("gpt2", "hf", "gpt2", "GPT-2 small language model, 12 layers, seq 128"),
    ]
}

# transformers architectures by preset: the library's default config (the base size) with
# the overrides given; decoders whose default is billions of parameters get a small preset
_SMALL_DECODER = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
                  "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 32000}
HF_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert": ("bert", {}),
    "roberta": ("roberta", {}),
    "distilbert": ("distilbert", {}),
    "albert": ("albert", {}),
    "electra": ("electra", {}),
    "gpt2": ("gpt2", {}),
    "opt": ("opt", {}),
    "llama": ("llama", _SMALL_DECODER),
    "mistral": ("mistral", _SMALL_DECODER),
    "qwen2": ("qwen2", _SMALL_DECODER),
    # encoder-decoders (the decoder on a fixed prompt), images and audio
    "t5": ("t5", {}),  # the default config is T5-small
    "bart": ("bart", {"d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
                      "encoder_attention_heads": 12, "decoder_attention_heads": 12,
                      "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072}),  # BART-base
    "whisper": ("whisper", {}),  # Whisper-tiny's sizes, 30 s of log-mel frames
    "vit": ("vit", {}),  # ViT-B/16 at 224 x 224
    "wav2vec2": ("wav2vec2", {}),  # wav2vec 2.0 base, one second of 16 kHz audio
}


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ToolkitError(
            "zoo models need torch: install the zoo extra (pip install -e '.[zoo]')"
        ) from exc
    return torch


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise ToolkitError(
            "timm architectures need timm: install the timm extra (pip install -e '.[timm]')"
        ) from exc
    return timm


def _torch_version() -> str:
    """The installed torch's version, read without importing torch (which takes seconds)."""
    try:
        return importlib.metadata.version("torch").split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return str(_torch().__version__).split("+")[0]  # raises the install hint


def _build_torchvision(arch: str) -> tuple[Any, tuple[Any, ...]]:
    """A torchvision classifier at its published evaluation resolution (or the one it is
    built for)."""
    import torchvision

    builder = torchvision.models.get_model_builder(arch)
    # auxiliary heads are a second output in training; their init (truncated normal) is slow
    options = _builder_options(builder)
    kwargs: dict[str, Any] = {"weights": None}
    kwargs.update({k: False for k in ("aux_logits", "init_weights") if k in options})
    module = builder(**kwargs).eval()
    weights = torchvision.models.get_model_weights(arch)
    crop = getattr(weights.DEFAULT.transforms, "keywords", {}).get("crop_size")
    # a model built for one input size says so (ViT's image_size): its default weights may
    # be for another (ViT-H/14's 518 px)
    size = getattr(module, "image_size", crop if isinstance(crop, int) else 224)
    return module, (_torch().randn(1, 3, size, size),)


def _builder_options(builder: Any) -> set[str]:
    """Keyword options a torchvision builder's model class takes (builders pass **kwargs on)."""
    options = set(inspect.signature(builder).parameters)
    model_class = inspect.signature(builder).return_annotation
    if isinstance(model_class, type):
        options |= set(inspect.signature(model_class).parameters)
    return options


def _build_timm(arch: str) -> tuple[Any, tuple[Any, ...]]:
    """A timm architecture at its default input size."""
    module = _timm().create_model(arch, pretrained=False).eval()
    channels, height, width = module.pretrained_cfg.get("input_size", (3, 224, 224))
    return module, (_torch().randn(1, channels, height, width),)


def _hf_config(arch: str) -> Any:
    """A transformers config: a preset by name, or a local config.json."""
    try:
        import transformers
    except ImportError as exc:
        raise ToolkitError(
            "transformers architectures need the zoo extra (pip install -e '.[zoo]')"
        ) from exc
    if arch in HF_PRESETS:
        model_type, overrides = HF_PRESETS[arch]
        return transformers.AutoConfig.for_model(model_type, **overrides)
    path = Path(arch)
    if not path.is_file():
        known = ", ".join(HF_PRESETS)
        raise ModelError(f"hf:{arch}: neither a preset ({known}) nor a config.json file")
    try:
        values = json.loads(path.read_text())
        model_type = values.pop("model_type")
        return transformers.AutoConfig.for_model(model_type, **values)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ModelError(f"hf:{arch}: not a transformers config ({exc})") from exc


def _build_hf(arch: str) -> tuple[Any, tuple[Any, ...]]:
    """A transformers model from its config, taking what its config says it reads (token
    ids, images or audio) and returning one tensor: encoders (those with a masked-LM head)
    without a head, decoders with their LM head, encoder-decoders fed a fixed decoder
    prompt."""
    import transformers

    torch = _torch()
    config = _hf_config(arch)
    config._attn_implementation = "eager"  # the fused kernels have no TorchScript export
    if hasattr(config, "use_cache"):
        config.use_cache = False
    mappings = transformers.models.auto.modeling_auto
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    if encoder_decoder or config.model_type in mappings.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        model = transformers.AutoModel.from_config(config)
    elif config.model_type in mappings.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        model = transformers.AutoModelForCausalLM.from_config(config)
    else:
        model = transformers.AutoModel.from_config(config)
    accepted = set(inspect.signature(model.forward).parameters)
    main = str(getattr(model, "main_input_name", "input_ids"))
    example = _hf_example(arch, config, main)

    class InputModel(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            extra = {}
            if main == "input_ids":
                # explicit mask and positions keep transformers' mask helpers (aten::diff) out
                extra = {"attention_mask": torch.ones_like(x),
                         "position_ids": torch.arange(x.shape[1], device=x.device).unsqueeze(0)}
            if encoder_decoder and "decoder_input_ids" in accepted:
                # (a decoder that reads learned queries, as DETR's, takes no prompt, and a
                # prompt's mask would not fit its queries)
                start = int(getattr(config, "decoder_start_token_id", None) or 0)
                prompt = _positions(config, _DECODER_LENGTH)
                extra["decoder_input_ids"] = torch.full((1, prompt), start % _vocab(config),
                                                      device=x.device)
                extra["decoder_attention_mask"] = torch.ones(1, prompt, dtype=torch.long,
                                                           device=x.device)
            kwargs = {k: v for k, v in extra.items() if k in accepted}
            return self.model(**{main: x}, return_dict=False, **kwargs)[0]

    return InputModel().eval(), (example,)


_DECODER_LENGTH = 16
"""Tokens of the fixed prompt an encoder-decoder's decoder reads (T5, BART, Whisper)."""


def _vocab(config: Any) -> int:
    """The config's vocabulary size (1,000 where it has none)."""
    return int(getattr(config, "vocab_size", None) or 1000)


def _positions(config: Any, wanted: int) -> int:
    """`wanted` tokens, or fewer where the config's position table is shorter."""
    limits = [getattr(config, key, None) for key in
              ("max_position_embeddings", "n_positions", "max_target_positions")]
    return min([wanted, *(int(x) for x in limits if isinstance(x, int) and x > 0)])


def _hf_example(arch: str, config: Any, main: str) -> Any:
    """One sample of what a transformers model reads first (`main_input_name`): token ids,
    an image at the config's size, one second of 16 kHz audio, or log-mel frames."""
    torch = _torch()
    if main == "input_ids":
        return torch.randint(0, min(1000, _vocab(config)),
                             (1, _positions(config, SEQUENCE_LENGTH)))
    if main == "pixel_values":
        size = getattr(config, "image_size", 224)
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        return torch.randn(1, int(getattr(config, "num_channels", 3)), height, width)
    if main == "input_values":
        return torch.randn(1, 16000)
    if main == "input_features" and hasattr(config, "num_mel_bins") \
            and hasattr(config, "max_source_positions"):  # Whisper: 2 frames per position
        return torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions)
    raise ModelError(f"hf:{arch}: a {config.model_type} model reads {main!r}; the zoo builds "
                     "inputs for token ids, images (pixel_values), audio samples "
                     "(input_values) and Whisper's log-mel frames only")


_BUILDERS: dict[str, Callable[[str], tuple[Any, tuple[Any, ...]]]] = {
    "torchvision": _build_torchvision, "timm": _build_timm, "hf": _build_hf,
}


def get(name: str) -> ZooModel:
    """A zoo model by name: a reference name, `SOURCE:ARCH` (torchvision, timm, hf), or any
    torchvision classification architecture by its plain name."""
    if name in MODELS:
        return MODELS[name]
    source, sep, arch = name.partition(":")
    if sep and source in _BUILDERS and arch:
        if source == "torchvision":
            return get(arch) if arch in _torchvision_names() else _unknown(name)
        if source == "timm" and not _timm().is_model(arch):
            raise ModelError(f"unknown timm architecture {arch!r} (see timm.list_models())")
        if source == "hf":
            _hf_config(arch)  # a clear error for an unknown preset or a bad config.json
        return ZooModel(name, source, arch)
    if not sep and _torchvision_installed() and name in _torchvision_names():
        return ZooModel(name, "torchvision", name)
    return _unknown(name)


def _unknown(name: str) -> NoReturn:
    raise ModelError(
        f"unknown zoo model {name!r}; known: {', '.join(MODELS)}, any torchvision classifier, "
        f"timm:NAME, hf:PRESET ({', '.join(HF_PRESETS)}) or hf:path/config.json"
    )


def _torchvision_installed() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def family_of(model: str) -> str | None:
    """A zoo model's family; None for a file (or a name no source builds)."""
    path = Path(model)
    if path.suffix == ".onnx" or path.exists():
        return None
    try:
        return get(model).family
    except ToolkitError:
        return None


def names(source: str) -> list[str]:
    """Every architecture a source offers, by zoo name."""
    if source == "reference":
        return list(MODELS)
    if source == "torchvision":
        return _torchvision_names()
    if source == "timm":
        return [f"timm:{arch}" for arch in _timm().list_models()]
    if source == "hf":
        return [f"hf:{preset}" for preset in HF_PRESETS]
    raise ToolkitError(f"unknown zoo source {source!r}; choose one of {', '.join(SOURCES)}")


def sample(items: Sequence[str], limit: int | None) -> list[str]:
    """At most `limit` of `items`, spread evenly over them (every k-th), in order."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        return []
    return [items[(k * len(items)) // limit] for k in range(limit)]


def cache_dir() -> Path:
    """Where exports are cached: $SPLITCUT_CACHE, else ~/.cache/splitcut."""
    root = os.environ.get("SPLITCUT_CACHE") or Path.home() / ".cache" / "splitcut"
    return Path(root) / "zoo"


def export(
    name: str,
    out_dir: str | Path | None = None,
    exporter: str = "torchscript",
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    training: bool = False,
) -> Path:
    """Export a zoo model to ONNX and return its path; an existing export is reused.
    `training` exports the module in train mode: dropout stays in the graph, as it trains,
    and every layer (`keep_every_layer`)."""
    if exporter not in EXPORTERS:
        raise ToolkitError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    model = get(name)
    directory = Path(out_dir) if out_dir is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ("" if exporter == "torchscript" else f".{exporter}") + (".train" if training else "")
    version = f"{EXPORT_VERSION}.{TRAINING_EXPORT_VERSION}" if training else f"{EXPORT_VERSION}"
    tag = "" if out_dir is not None else f".v{version}.torch{_torch_version()}"
    path = directory / f"{model.file_stem}{suffix}{tag}.onnx"
    if path.exists() and not force:
        return path
    if progress is not None:
        progress(f"exporting {name} with the {exporter} exporter")
    try:
        module, args = model.build()
        module.train(training)
        if training:
            keep_every_layer(module)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            tmp_path = Path(tmp) / path.name
            export_pytorch(module, args, tmp_path, exporter)
            if data_file(tmp_path).exists():  # the weights first: the model names them
                os.replace(data_file(tmp_path), data_file(path))
            os.replace(tmp_path, path)
    except ToolkitError:
        raise
    except Exception as exc:  # the libraries' own errors, whatever their type: one line
        other = next(e for e in EXPORTERS if e != exporter)  # each fails where the other may not
        raise ModelError(f"{name}: the {exporter} export failed: {export_failure(exc)} "
                         f"(the {other} exporter may get further: --exporter {other})") from exc
    if out_dir is None:
        _drop_stale(directory, f"{model.file_stem}{suffix}", path)
    return path


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAISED_CLASS = re.compile(r"^<class '(?:[\w.]*\.)?(\w+)'>:\s*")


def export_failure(exc: BaseException) -> str:
    """Why an export failed, in one line. The dynamo exporter's message opens with its step
    ("Failed to convert the exported program... This is step 3/3") and names the cause only
    under "## Exception summary" (`DispatchError: No ONNX function found for ...`): that
    cause is the line given where there is one."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines()]
    cause = next((k for k, line in enumerate(lines) if line == "## Exception summary"), None)
    if cause is not None:
        found = next((line for line in lines[cause + 1:] if line), "")
        named = _RAISED_CLASS.match(found)
        if named is not None:
            return f"{named.group(1)}: {found[named.end():]}"[:300]
    first = next((line for line in lines if line), "")
    return f"{type(exc).__name__}: {first}"[:300]


def _drop_stale(directory: Path, stem: str, current: Path) -> None:
    """Remove the cache's exports of this model and exporter made by another export version or
    torch (`current` replaces them): each can hold gigabytes, and none is read again."""
    stale = re.compile(re.escape(stem) + r"\.v\d+(?:\.\d+)?\.torch[\w.]+\.onnx(?:\.data)?")
    for found in directory.iterdir():
        if found.name not in (current.name, data_file(current).name) \
                and stale.fullmatch(found.name) and found.is_file():
            found.unlink(missing_ok=True)


def keep_every_layer(module: Any) -> None:
    """LayerDrop off (transformers' `layerdrop`, `encoder_layerdrop`, `decoder_layerdrop`, on
    a module or its config): in train mode it skips each layer at random at every step, so a
    trace holds a random subset of them (wav2vec2's export once held 10 of its 12), and the
    step that skips none is the one whose time and memory must fit."""
    for part in module.modules():
        for holder in (part, getattr(part, "config", None)):
            for key in _LAYERDROP:
                if isinstance(getattr(holder, key, None), float):
                    setattr(holder, key, 0.0)


def export_pytorch(module: Any, args: tuple[Any, ...], path: str | Path,
                   exporter: str = "torchscript") -> Path:
    """Export a PyTorch module (yours or the zoo's) as splitcut reads it best: every layer
    that trains kept (BatchNorm not folded), and each node tagged with its module path and
    the classes around it, so block types are named after classes (`Bottleneck`) — a plain
    TorchScript export has module paths only."""
    if exporter not in EXPORTERS:
        raise ToolkitError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    path = Path(path)
    export_module(_torch(), module, args, path, exporter)
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    if exporter == "torchscript":  # (the dynamo exporter marks buffers itself: `buffer_names`)
        frozen.update(name for name, _ in module.named_buffers())
    if exporter == "torchscript" or frozen:
        _annotate(path, module, exporter == "torchscript", frozen)
    return path


def _annotate(path: Path, module: Any, with_classes: bool, frozen: set[str]) -> None:
    """Write into the export what the module knows and the exporter leaves out: what does not
    train, marked on its initializers (`FROZEN`: no gradient, no optimizer step): frozen
    parameters (`requires_grad=False`, as Whisper's and Pegasus's sinusoidal position tables)
    and, under TorchScript, which writes buffers as initializers like any weight, buffers
    (DETR's frozen batch norms scale by four of them); and, with
    `with_classes`, the module-class metadata the dynamo exporter writes and TorchScript
    does not (`_name_classes`)."""
    import onnx

    from toolkit.onnx.load import FROZEN

    model = onnx.load(str(path))
    for t in model.graph.initializer:
        if t.name in frozen:
            entry = t.metadata_props.add()
            entry.key, entry.value = FROZEN, "false"
    if with_classes:
        _name_classes(model, module)
    if sum(len(t.raw_data) for t in model.graph.initializer) > INLINE_WEIGHTS:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_file(path).name)
    else:
        onnx.save(model, str(path))


def _name_classes(model: Any, module: Any) -> None:
    """TorchScript names nodes by module path only (`/layer1/layer1.0/conv1/Conv`); the
    classes (`Bottleneck`) name block types. Same keys and format as dynamo's
    `pkg.torch.onnx.name_scopes` / `pkg.torch.onnx.class_hierarchy`."""
    from toolkit.onnx import module_path

    modules = {name: type(m) for name, m in module.named_modules()}
    for node in model.graph.node:
        path_ = module_path(node.name)
        if path_ is None:
            continue
        parts = path_.split(".")
        prefixes = [".".join(parts[: k + 1]) for k in range(len(parts))]
        scopes = ["", *(p for p in prefixes if p in modules)]
        classes = [f"{modules[s].__module__}.{modules[s].__qualname__}" for s in scopes]
        for key, value in (("pkg.torch.onnx.name_scopes", scopes),
                           ("pkg.torch.onnx.class_hierarchy", classes)):
            entry = node.metadata_props.add()
            entry.key, entry.value = key, repr(value)


def data_file(path: Path) -> Path:
    """Where an export's weights go when they are too large to stay inside the file."""
    return path.with_name(path.name + ".data")


_OPSET_NEEDED = re.compile(r"added in version (\d+)")
"""How the TorchScript exporter says an operator needs a later opset than the one asked."""


def export_module(
    torch: Any, module: Any, args: tuple[Any, ...], path: Path, exporter: str
) -> None:
    """TorchScript: PRESERVE mode keeps BatchNorm unfused. Dynamo: optimize=False for the same.
    The tracer's, the exporter's and the model code's warnings (inputs of other shapes or
    values; transformers' "To copy construct from a tensor" under the tracer) are silenced:
    the export is of one fixed example on purpose, and the command's output stays its own."""
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX export
    with torch.no_grad(), warnings.catch_warnings(), _native_stdout_held():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        if exporter == "torchscript":
            opset = 17
            while True:  # (each try with tensors shared by storage only: `_shared_by_storage`)
                try:
                    with _shared_by_storage(torch):
                        torch.onnx.export(
                            module, args, str(path), dynamo=False, opset_version=opset,
                            training=torch.onnx.TrainingMode.PRESERVE,
                            do_constant_folding=False, input_names=["input"],
                        )
                    break
                except torch.onnx.errors.UnsupportedOperatorError as exc:
                    newer = _OPSET_NEEDED.search(str(exc))
                    if newer is None or int(newer.group(1)) <= opset:
                        raise
                    opset = int(newer.group(1))  # an operator ONNX has since (AffineGrid: 20)
        else:
            torch.onnx.export(
                module, args, str(path), dynamo=True, optimize=False, external_data=False,
                verbose=False,
            )


@contextmanager
def _shared_by_storage(torch: Any) -> Iterator[None]:
    """TorchScript exports store tensors of equal value once when the module is in eval mode
    (`_jit_pass_onnx_deduplicate_initializers`, by value unless the top module is training),
    the others becoming Identity nodes of it. At random initialisation many are equal (every
    batch norm's weight and running variance are ones), so a buffer's initializer could stand
    for trained weights too, and marking it (`_annotate`) would freeze them (timm's ResNet-50d:
    10,000 parameters lost). The pass is told the export trains, which merges only tensors that
    share storage (tied weights): each other tensor keeps an initializer of its own. Nothing
    else of the export reads that flag."""
    dedupe = torch._C._jit_pass_onnx_deduplicate_initializers

    def by_storage(graph: Any, params: Any, _is_train: bool) -> Any:
        return dedupe(graph, params, True)

    torch._C._jit_pass_onnx_deduplicate_initializers = by_storage
    try:
        yield
    finally:
        torch._C._jit_pass_onnx_deduplicate_initializers = dedupe


@contextmanager
def _native_stdout_held() -> Iterator[None]:
    """Standard output (the file descriptor, where C++ writes) held aside while exporting:
    the TorchScript exporter prints the whole graph it was building (900 lines for a small
    Mixtral) on fd 1 when an operator has no export, which would bury the one-line error and
    break `--json` output; its exception says the same in a line. What was written is passed
    on where the export succeeds (nothing is lost) and logged (DEBUG) where it fails."""
    sys.stdout.flush()
    saved = os.dup(1)
    failed = True
    with tempfile.TemporaryFile() as held:
        try:
            os.dup2(held.fileno(), 1)
            yield
            failed = False
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            held.seek(0)
            written = held.read()
            if failed:
                log.debug("the exporter wrote: %s", written.decode(errors="replace"))
            else:
                while written:
                    written = written[os.write(1, written):]


def resolve(model: str, exporter: str = "torchscript") -> tuple[Path, str]:
    """MODEL argument of the CLI -> (ONNX path, default model name): a file path or a zoo name."""
    p = Path(model)
    if p.suffix == ".onnx" or p.exists():
        return p, p.stem
    try:
        found = get(model)
    except ModelError as exc:
        if ":" in model:  # SOURCE:ARCH: the source's own complaint is the clearest
            raise
        raise ModelError(f"{model!r} is neither an ONNX file nor a zoo model: {exc}") from None
    return export(model, exporter=exporter), found.short_name
