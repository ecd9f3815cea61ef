"""The executor's recurrent, transposed-convolution, resampling, spatial-sampling and detection
operators against PyTorch and torchvision: a module exported to ONNX and run by the executor
gives the module's own outputs, and the same gradients for its input and every weight. (The
onnx package's node tests check each operator's outputs too:
`test_train.py::test_executor_equals_the_onnx_backend_node_tests`.)"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from tests.helpers import vi, weight
from toolkit.train.executor import OnnxModule, trainable_initializers
from toolkit.zoo import export_pytorch


class _Recurrent(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, state = self.rnn(x)
        return (out, *state) if isinstance(state, tuple) else (out, state)


class _Resample(nn.Module):
    def __init__(self, **how: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), **self.how)  # type: ignore[arg-type]


class _Fourier(nn.Module):
    """FNet's token mixing (a 2-D FFT's real part), or a filter in the frequency domain
    (a one-sided FFT, scaled, and its inverse)."""

    def __init__(self, filtered: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
        self.filtered = filtered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.filtered:
            mixed = torch.fft.irfft(torch.fft.rfft(h, dim=1) * 0.5, n=h.shape[1], dim=1)
        else:
            mixed = torch.fft.fftn(h, dim=(1, 2)).real
        return self.b(mixed + h)


class _SpatialTransformer(nn.Module):
    """theta from the input (affine_grid and grid_sample: AffineGrid at opset 20, GridSample),
    a convolution, and a determinant of each sample's first feature map (Det)."""

    def __init__(self) -> None:
        super().__init__()
        self.locate, self.conv = nn.Linear(3, 6), nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.locate(x.mean(dim=(2, 3))).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        y = self.conv(F.grid_sample(x, grid, align_corners=False))
        return y.flatten(1) * torch.linalg.det(y[:, 0])[:, None]


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lstm-bidirectional-batch-first": (lambda: _Recurrent(nn.LSTM(
        5, 6, num_layers=2, bidirectional=True, batch_first=True)), (3, 7, 5)),
    "lstm-time-first": (lambda: _Recurrent(nn.LSTM(5, 6)), (7, 3, 5)),
    "gru-bidirectional": (lambda: _Recurrent(nn.GRU(5, 6, bidirectional=True)), (7, 3, 5)),
    "rnn-relu-2-layers": (lambda: _Recurrent(nn.RNN(5, 6, num_layers=2, nonlinearity="relu",
                                                    batch_first=True)), (3, 7, 5)),
    "conv-transpose": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1,
                                                  output_padding=1, groups=2, dilation=2),
                       (2, 4, 5, 6)),
    "conv-transpose-3d": (lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), (1, 2, 3, 4, 4)),
    "bilinear": (lambda: _Resample(scale_factor=2, mode="bilinear"), (2, 3, 5, 7)),
    "bilinear-align-corners": (lambda: _Resample(size=(9, 4), mode="bilinear",
                                                 align_corners=True), (2, 3, 5, 7)),
    "nearest": (lambda: _Resample(scale_factor=3, mode="nearest"), (2, 3, 5, 7)),
    "nearest-downsample": (lambda: _Resample(size=(3, 4), mode="nearest"), (2, 3, 5, 7)),
    "bicubic": (lambda: _Resample(size=(8, 11), mode="bicubic"), (2, 3, 5, 7)),
    "fourier-mixing": (lambda: _Fourier(filtered=False), (2, 5, 6)),
    "fourier-filter": (lambda: _Fourier(filtered=True), (2, 5, 6)),
    "spatial-transformer": (_SpatialTransformer, (2, 3, 7, 7)),
}
EXPORTER = {"fourier-mixing": "dynamo", "fourier-filter": "dynamo"}  # TorchScript: no fft


@pytest.mark.parametrize("case", CASES)
def test_executor_gives_pytorchs_outputs_and_gradients(case, tmp_path):
    make, shape = CASES[case]
    torch.manual_seed(0)
    module = make().eval()
    x = torch.randn(*shape)
    path = export_pytorch(module, (x,), tmp_path / "m.onnx", EXPORTER.get(case, "torchscript"))
    m = onnx.load(str(path))
    executor = OnnxModule(m, trainable_initializers(m.graph))
    fed = x.clone().requires_grad_(True)
    got = executor({m.graph.input[0].name: fed})
    wanted_x = x.clone().requires_grad_(True)
    wanted = module(wanted_x)
    wanted = wanted if isinstance(wanted, tuple) else (wanted,)
    outputs = [got[name] for name in executor.output_names]
    assert len(outputs) == len(wanted)
    probes = [torch.randn_like(w) for w in wanted]
    for out, want in zip(outputs, wanted, strict=True):
        assert out.shape == want.shape
        assert torch.allclose(out, want, rtol=1e-4, atol=1e-5)
    sum((o * p).sum() for o, p in zip(outputs, probes, strict=True)).backward()
    sum((w * p).sum() for w, p in zip(wanted, probes, strict=True)).backward()
    assert fed.grad is not None and wanted_x.grad is not None
    assert torch.allclose(fed.grad, wanted_x.grad, rtol=1e-4, atol=1e-5)
    params = dict(module.named_parameters())
    trained = executor.named_weights()
    assert set(trained) == set(params)  # every weight trains, none else
    for name, param in trained.items():
        assert param.grad is not None and params[name].grad is not None, name
        assert torch.allclose(param.grad, params[name].grad, rtol=1e-4, atol=1e-5), name


def test_variable_sequence_lengths_equal_onnxruntime():
    """Per-sample `sequence_lens`, which PyTorch's export never writes: a sample's steps past
    its length output zeros and leave its state alone, in both directions."""
    hidden, steps, batch, features = 4, 6, 3, 5
    torch.manual_seed(1)
    for op, gates, extra in (("LSTM", 4, ["y_c"]), ("GRU", 3, []), ("RNN", 1, [])):
        w = weight("w", 2, gates * hidden, features)
        r = weight("r", 2, gates * hidden, hidden)
        b = weight("b", 2, 2 * gates * hidden)
        lens = helper.make_tensor("lens", TensorProto.INT32, [batch], [6, 2, 4])
        node = helper.make_node(op, ["x", "w", "r", "b", "lens"], ["y", "y_h", *extra],
                                hidden_size=hidden, direction="bidirectional")
        graph = helper.make_graph([node], op, [vi("x", [steps, batch, features])],
                                  [vi(o, None) for o in ["y", "y_h", *extra]],
                                  [w, r, b, lens])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        x = torch.randn(steps, batch, features)
        expected = ort.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"]).run(
            None, {"x": x.numpy()})
        with torch.no_grad():
            got = OnnxModule(model, ["w", "r", "b"])({"x": x})
        for name, want in zip(["y", "y_h", *extra], expected, strict=True):
            assert torch.allclose(got[name], torch.from_numpy(want), rtol=1e-4,
                                  atol=1e-5), (op, name)
        assert float(got["y"][2:, :, 1].abs().max()) == 0  # sample 1 stops after 2 steps


@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool", "AveragePool-uneven"])
def test_same_padding_and_uneven_excluded_pads_equal_onnxruntime(op):
    """TensorFlow's and JAX's "SAME" padding as tf2onnx and jax2onnx write it (auto_pad
    SAME_UPPER / SAME_LOWER: the odd pad at the end or the beginning), and an average pool
    that leaves uneven pads out of its count, which torch's pools cannot do themselves."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 7, 8)
    for auto in ("SAME_UPPER", "SAME_LOWER"):
        inputs, weights = ["x"], []
        attrs: dict[str, object] = {"strides": [2, 2], "auto_pad": auto}
        if op == "Conv":
            weights = [weight("w", 4, 3, 3, 3), weight("b", 4, seed=1)]
            inputs += ["w", "b"]
        else:
            attrs["kernel_shape"] = [3, 3]
        if op == "AveragePool-uneven":
            attrs.pop("auto_pad")
            attrs["pads"] = [0, 1, 2, 1] if auto == "SAME_UPPER" else [2, 0, 0, 2]
        node = helper.make_node(op.split("-")[0], inputs, ["y"], **attrs)  # type: ignore[arg-type]
        graph = helper.make_graph([node], "same", [vi("x", [2, 3, 7, 8])], [vi("y", None)],
                                  weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        want = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(
            None, {"x": x.numpy()})[0]
        fed = x.clone().requires_grad_(True)
        got = OnnxModule(model, [w.name for w in weights])({"x": fed})["y"]
        assert got.shape == want.shape, (op, auto)
        assert torch.allclose(got, torch.from_numpy(want), rtol=1e-4, atol=1e-5), (op, auto)
        got.sum().backward()
        assert fed.grad is not None and float(fed.grad.abs().max()) > 0


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_gives_torchvisions_values_and_gradients(aligned):
    """RoiAlign (average, adaptive and fixed sampling) against torchvision.ops.roi_align,
    the kernel PyTorch's detectors train with: the pooled values and the feature map's
    gradient."""
    ops = pytest.importorskip("torchvision.ops")
    torch.manual_seed(2)
    data = torch.randn(2, 3, 12, 10)
    boxes = torch.tensor([[0.5, 1.0, 7.5, 9.0], [2.0, 0.0, 9.5, 5.5], [-1.0, 3.0, 4.0, 13.0]])
    batch = torch.tensor([0, 1, 1])
    for ratio in (0, 2):
        node = helper.make_node(
            "RoiAlign", ["x", "rois", "batch"], ["y"], output_height=3, output_width=4,
            sampling_ratio=ratio, spatial_scale=0.5,
            coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")
        graph = helper.make_graph([node], "roi", [vi("x", [2, 3, 12, 10])], [vi("y", None)],
                                  [helper.make_tensor("rois", TensorProto.FLOAT, [3, 4],
                                                      boxes.flatten().tolist()),
                                   helper.make_tensor("batch", TensorProto.INT64, [3],
                                                      batch.tolist())])
        executor = OnnxModule(helper.make_model(graph), [])
        fed, wanted_x = data.clone().requires_grad_(True), data.clone().requires_grad_(True)
        got = executor({"x": fed})["y"]
        wanted = ops.roi_align(wanted_x, torch.cat([batch[:, None].float(), boxes], 1),
                               (3, 4), spatial_scale=0.5, sampling_ratio=ratio,
                               aligned=aligned)
        assert torch.allclose(got, wanted, atol=1e-5)
        probe = torch.randn_like(wanted)
        (got * probe).sum().backward()
        (wanted * probe).sum().backward()
        assert fed.grad is not None and wanted_x.grad is not None
        assert torch.allclose(fed.grad, wanted_x.grad, atol=1e-5)
        assert float(fed.grad.abs().max()) > 0
