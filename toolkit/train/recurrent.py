"""ONNX's recurrent operators (LSTM, GRU, RNN) as torch functions, one step at a time.

As the ONNX specification writes them: weights stacked per direction (W: input, R:
recurrence, B: both biases), gates in ONNX's order (LSTM i, o, f, c; GRU z, r, h), time first
(`layout=0`) or batch first (`layout=1`), a reverse pass for `direction=reverse` and
`bidirectional`, and per-sample `sequence_lens` (a sample's steps past its length leave its
state alone and output zeros). Autograd runs back through every step, so the weights train.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from toolkit.train.ops import Attrs, Value, op

Activation = Callable[[torch.Tensor], torch.Tensor]
_ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                        "RNN": ["Tanh"]}
Cell = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None],
                tuple[torch.Tensor, torch.Tensor | None]]


@op("LSTM")
def lstm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return _recurrent("LSTM", a, x)


@op("GRU")
def gru(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return _recurrent("GRU", a, x)


@op("RNN")
def rnn(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return _recurrent("RNN", a, x)


def _recurrent(kind: str, a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Outputs Y (every step's hidden state), Y_h (the last one) and, for an LSTM, Y_c."""
    def given(k: int) -> torch.Tensor | None:
        return x[k] if len(x) > k and x[k] is not None else None

    if int(a.get("input_forget", 0)):
        raise NotImplementedError(f"{kind} with input_forget")
    layout = int(a.get("layout", 0))
    data = given(0)
    assert data is not None
    seq = data.transpose(0, 1) if layout else data  # (time, batch, input)
    steps, batch = seq.shape[0], seq.shape[1]
    w, r = x[1], x[2]
    directions, hidden = w.shape[0], r.shape[-1]
    bias = given(3)
    lengths = given(4)
    h0, c0 = given(5), given(6)
    peep = given(7)
    if layout:
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    acts = _activations(kind, a, directions)
    clip = float(a["clip"]) if "clip" in a else None
    ys, hs, cs = [], [], []
    for d in range(directions):
        reverse = a.get("direction", "forward") == "reverse" or d == 1
        b = bias[d] if bias is not None else seq.new_zeros(2 * _GATES[kind] * hidden)
        cell = _cell(kind, w[d], r[d], b, peep[d] if peep is not None else None,
                     acts[d], clip, hidden, a)
        h = h0[d] if h0 is not None else seq.new_zeros(batch, hidden)
        c = (c0[d] if c0 is not None else seq.new_zeros(batch, hidden)) if kind == "LSTM" \
            else None
        out: list[torch.Tensor] = [seq.new_zeros(0)] * steps
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            new_h, new_c = cell(seq[t], h, c)
            if lengths is not None:
                live = (t < lengths).reshape(-1, 1)
                new_h = torch.where(live, new_h, h)
                new_c = torch.where(live, new_c, c) if c is not None and new_c is not None \
                    else new_c
                out[t] = torch.where(live, new_h, torch.zeros_like(new_h))
            else:
                out[t] = new_h
            h, c = new_h, new_c
        ys.append(torch.stack(out))  # (time, batch, hidden)
        hs.append(h)
        if c is not None:
            cs.append(c)
    y = torch.stack(ys, 1)  # (time, directions, batch, hidden)
    y_h = torch.stack(hs)  # (directions, batch, hidden)
    results = [y, y_h] + ([torch.stack(cs)] if cs else [])
    if layout:
        results = [y.permute(2, 0, 1, 3)] + [s.transpose(0, 1) for s in results[1:]]
    return tuple(results)


def _activations(kind: str, a: Attrs, directions: int) -> list[list[Activation]]:
    """Each direction's activation functions: the defaults, or the ones the node names where
    they take no parameters (Sigmoid, Tanh, Relu)."""
    default = _DEFAULT_ACTIVATIONS[kind]
    names = list(a.get("activations", default * directions))
    if "activation_alpha" in a or "activation_beta" in a or len(names) != len(default) * \
            directions:
        raise NotImplementedError(f"{kind} activations {names}")
    picked = []
    for name in names:
        fn = _ACTIVATIONS.get((name.decode() if isinstance(name, bytes) else name).lower())
        if fn is None:
            raise NotImplementedError(f"{kind} activation {name}")
        picked.append(fn)
    per = len(default)
    return [picked[d * per:(d + 1) * per] for d in range(directions)]


def _cell(kind: str, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor,
          peep: torch.Tensor | None, acts: list[Activation], clip: float | None,
          hidden: int, a: Attrs) -> Cell:
    """One step of one direction: (input, hidden, cell state) -> (hidden, cell state)."""
    gates = _GATES[kind]
    wb, rb = b[:gates * hidden], b[gates * hidden:]

    def pre(t: torch.Tensor) -> torch.Tensor:
        return t.clamp(-clip, clip) if clip is not None else t

    if kind == "LSTM":
        f, g, h_act = acts
        p = peep.reshape(3, hidden) if peep is not None else None

        def lstm_step(xt: torch.Tensor, h: torch.Tensor,
                      c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
            assert c is not None
            i, o, fg, cc = (xt @ w.T + wb + h @ r.T + rb).chunk(4, -1)
            if p is not None:
                i, fg = i + p[0] * c, fg + p[2] * c
            i, fg = f(pre(i)), f(pre(fg))
            c = fg * c + i * g(pre(cc))
            if p is not None:
                o = o + p[1] * c
            return f(pre(o)) * h_act(c), c

        return lstm_step
    if kind == "GRU":
        f, g = acts
        before_reset = int(a.get("linear_before_reset", 0))
        wz, wr, wh = w.chunk(3, 0)
        rz, rr, rh = r.chunk(3, 0)
        (wbz, wbr, wbh), (rbz, rbr, rbh) = wb.chunk(3), rb.chunk(3)

        def gru_step(xt: torch.Tensor, h: torch.Tensor,
                     c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
            z = f(pre(xt @ wz.T + h @ rz.T + wbz + rbz))
            reset = f(pre(xt @ wr.T + h @ rr.T + wbr + rbr))
            if before_reset:
                cand = g(pre(xt @ wh.T + reset * (h @ rh.T + rbh) + wbh))
            else:
                cand = g(pre(xt @ wh.T + (reset * h) @ rh.T + rbh + wbh))
            return (1 - z) * cand + z * h, None

        return gru_step
    (f,) = acts

    def rnn_step(xt: torch.Tensor, h: torch.Tensor,
                 c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return f(pre(xt @ w.T + wb + h @ r.T + rb)), None

    return rnn_step
