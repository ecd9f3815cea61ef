"""Reference models built offline with random weights and exported to ONNX (cached).

Nothing is downloaded: torchvision architectures are built with `weights=None` and transformer
language models from their default configs. Exports keep every layer that exists in training
(BatchNorm is not folded into Conv), so the graph is the one split learning trains.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import ModelError, ToolkitError

log = logging.getLogger(__name__)

EXPORTERS = ("torchscript", "dynamo")
SEQUENCE_LENGTH = 128
EXPORT_VERSION = 2  # bump when export settings change, so cached files are rebuilt


@dataclass(frozen=True)
class ZooModel:
    """One reference architecture: how to build it and what it takes as input."""

    name: str
    family: str
    description: str
    torchvision: str | None = None
    text: str | None = None

    def build(self) -> tuple[Any, tuple[Any, ...]]:
        """The torch module (eval mode, random weights) and example inputs for export."""
        torch = _torch()
        torch.manual_seed(0)
        if self.torchvision is not None:
            return _torchvision_model(self.torchvision), (torch.randn(1, 3, 224, 224),)
        assert self.text is not None
        return _text_model(self.text), (torch.randint(0, 1000, (1, SEQUENCE_LENGTH)),)

    def published_macs(self) -> float | None:
        """MACs per sample that torchvision publishes for this architecture (offline metadata)."""
        if self.torchvision is None:
            return None
        import torchvision

        weights = torchvision.models.get_model_weights(self.torchvision).DEFAULT
        return float(weights.meta["_ops"]) * 1e9


def _vision(name: str, arch: str, description: str) -> ZooModel:
    return ZooModel(name, "vision", description, torchvision=arch)


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in [
        _vision("resnet18", "resnet18", "ResNet-18, basic residual blocks"),
        _vision("resnet50", "resnet50", "ResNet-50, bottleneck residual blocks"),
        _vision("resnet152", "resnet152", "ResNet-152, 50 bottleneck blocks"),
        _vision("vgg16", "vgg16", "VGG-16, a plain chain of convolutions"),
        _vision("mobilenet_v2", "mobilenet_v2", "MobileNetV2, inverted residuals"),
        _vision("mobilenet_v3_large", "mobilenet_v3_large", "MobileNetV3-Large, SE blocks"),
        _vision("efficientnet_b0", "efficientnet_b0", "EfficientNet-B0, MBConv blocks"),
        _vision("densenet121", "densenet121", "DenseNet-121, dense blocks (few cut vertices)"),
        _vision("googlenet", "googlenet", "GoogLeNet, inception modules"),
        _vision("vit_b_16", "vit_b_16", "ViT-B/16, 12 transformer encoder layers"),
        _vision("swin_t", "swin_t", "Swin-T, shifted-window transformer"),
        _vision("convnext_tiny", "convnext_tiny", "ConvNeXt-T, modernised residual CNN"),
        ZooModel("bert_base", "text", "BERT-base encoder, 12 layers, seq 128", text="bert"),
        ZooModel("gpt2", "text", "GPT-2 small language model, 12 layers, seq 128", text="gpt2"),
    ]
}


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ToolkitError(
            "zoo models need torch: install the zoo extra (pip install -e '.[zoo]')"
        ) from exc
    return torch


def _torch_version() -> str:
    """The installed torch's version, read without importing torch (which takes seconds)."""
    try:
        return importlib.metadata.version("torch").split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return str(_torch().__version__).split("+")[0]  # raises the install hint


def _torchvision_model(arch: str) -> Any:
    import torchvision

    kwargs: dict[str, Any] = {"weights": None}
    if arch == "googlenet":
        kwargs.update(aux_logits=False, init_weights=False)
    return torchvision.models.get_model(arch, **kwargs).eval()


def _text_model(kind: str) -> Any:
    """A transformers model from its default config, taking token ids, returning one tensor."""
    import transformers

    torch = _torch()
    if kind == "bert":
        model = transformers.BertModel(
            transformers.BertConfig(attn_implementation="eager"), add_pooling_layer=False
        )
    else:
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(attn_implementation="eager", use_cache=False)
        )

    class TokenModel(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any) -> Any:
            # explicit mask and positions keep transformers' mask helpers (aten::diff) out
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            return self.model(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                position_ids=positions, return_dict=False,
            )[0]

    return TokenModel().eval()


def get(name: str) -> ZooModel:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(MODELS)
        raise ModelError(f"unknown zoo model {name!r}; known: {known}") from None


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
    `training` exports the module in train mode: dropout stays in the graph, as it trains."""
    if exporter not in EXPORTERS:
        raise ToolkitError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    model = get(name)
    directory = Path(out_dir) if out_dir is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ("" if exporter == "torchscript" else f".{exporter}") + (".train" if training else "")
    tag = "" if out_dir is not None else f".v{EXPORT_VERSION}.torch{_torch_version()}"
    path = directory / f"{name}{suffix}{tag}.onnx"
    if path.exists() and not force:
        return path
    torch = _torch()
    if progress is not None:
        progress(f"exporting {name} with the {exporter} exporter")
    module, args = model.build()
    module.train(training)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        tmp_path = Path(tmp) / path.name
        export_module(torch, module, args, tmp_path, exporter)
        if exporter == "torchscript":
            _annotate_modules(tmp_path, module)
        os.replace(tmp_path, path)
    return path


def _annotate_modules(path: Path, module: Any) -> None:
    """Give TorchScript exports the module-class metadata the dynamo exporter writes.

    TorchScript names nodes by module path only (`/layer1/layer1.0/conv1/Conv`); the classes
    (`Bottleneck`) name block types. Same keys and format as dynamo's
    `pkg.torch.onnx.name_scopes` / `pkg.torch.onnx.class_hierarchy`.
    """
    import onnx

    from toolkit.onnx import module_path

    modules = {name: type(m) for name, m in module.named_modules()}
    model = onnx.load(str(path))
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
    onnx.save(model, str(path))


def export_module(
    torch: Any, module: Any, args: tuple[Any, ...], path: Path, exporter: str
) -> None:
    """TorchScript: PRESERVE mode keeps BatchNorm unfused. Dynamo: optimize=False for the same."""
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX export
    with torch.no_grad():
        if exporter == "torchscript":
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=17,
                training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                input_names=["input"],
            )
        else:
            torch.onnx.export(
                module, args, str(path), dynamo=True, optimize=False, external_data=False,
                verbose=False,
            )


def resolve(model: str, exporter: str = "torchscript") -> tuple[Path, str]:
    """MODEL argument of the CLI -> (ONNX path, default model name): a file path or a zoo name."""
    p = Path(model)
    if p.suffix == ".onnx" or p.exists():
        return p, p.stem
    if model in MODELS:
        return export(model, exporter=exporter), model
    known = ", ".join(MODELS)
    raise ModelError(f"{model!r} is neither an ONNX file nor a zoo model (known: {known})")
