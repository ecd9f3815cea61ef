"""ONNX's Fourier transforms (DFT, STFT) as torch functions, through `torch.fft`.

A signal's last axis holds a real number (1) or a complex one (2, real and imaginary); the
transform runs along `axis` (the executor sets the opset's default where the node gives
none), zero-padded or cut to `dft_length`; an inverse transform is scaled by 1 / n, as
`torch.fft`'s default norm does; a one-sided transform keeps the n / 2 + 1 bins a real signal
determines (and its inverse makes a real signal of them). Autograd differentiates through
`torch.fft`, so FNet's token mixing trains.
"""

from __future__ import annotations

import torch

from toolkit.train.ops import Attrs, Value, op


def _complex(signal: torch.Tensor) -> torch.Tensor:
    """A signal with its last axis (1: real, 2: complex) folded into the numbers."""
    if signal.shape[-1] == 2:
        return torch.view_as_complex(signal.contiguous())
    if signal.shape[-1] == 1:
        return signal[..., 0]
    raise NotImplementedError(f"a signal's last axis of {signal.shape[-1]} (1 or 2)")


@op("DFT")
def dft(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    signal, length = x[0], x[1] if len(x) > 1 else None
    axis = int(x[2]) if len(x) > 2 and x[2] is not None else int(a["axis"])
    if not -signal.dim() <= axis < signal.dim() - 1:
        raise NotImplementedError(f"DFT along axis {axis} of a {signal.dim()}-D signal")
    axis %= signal.dim()
    n = int(length) if length is not None else None
    z = _complex(signal)
    inverse, onesided = bool(a.get("inverse", 0)), bool(a.get("onesided", 0))
    if inverse and onesided:
        return (torch.fft.irfft(z, n=n, dim=axis).unsqueeze(-1),)
    out = (torch.fft.ifft if inverse else torch.fft.fft)(z, n=n, dim=axis)
    if onesided:
        out = out.narrow(axis, 0, out.shape[axis] // 2 + 1)
    return (torch.view_as_real(out),)


@op("STFT")
def stft(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    signal, step = x[0], int(x[1])
    window = x[2] if len(x) > 2 else None
    length = int(x[3]) if len(x) > 3 and x[3] is not None else None
    if window is not None:
        length = window.shape[0]
    if length is None or signal.dim() != 3:
        raise NotImplementedError("STFT without a window or frame_length, or not on "
                                  "(batch, samples, 1 or 2)")
    frames = _complex(signal).unfold(1, length, step)  # (batch, frames, frame_length)
    if window is not None:
        frames = frames * window
    out = torch.fft.fft(frames, dim=-1)
    if a.get("onesided", 1):
        out = out[..., : length // 2 + 1]
    return (torch.view_as_real(out),)
