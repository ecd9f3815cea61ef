"""Pictures of results, written as PNG with matplotlib (installed with the `dev` extra, or by
itself: `pip install matplotlib`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.files import write_atomically
from toolkit.partition.sweep import SweepResult
from toolkit.report import plural


def sweep_plot(result: SweepResult, path: str | Path) -> Path:
    """Delay against the swept parameter, one line per optimal partition over its interval
    (log axis for rates; each piece's delay is affine in 1/rate), breakpoints marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ToolkitError("the plot needs matplotlib: pip install matplotlib") from exc
    out = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rates = result.parameter != "batch"
    scale = 1e6 if rates else 1.0
    for k, piece in enumerate(result.pieces):
        if rates:
            r = np.geomspace(piece.lo, piece.hi, 64)
            x, x_lo, x_hi = 1 / r, 1 / piece.lo, 1 / piece.hi
            t = (x - x_lo) / (x_hi - x_lo) if x_hi != x_lo else np.zeros_like(x)
            y = piece.delay_lo + (piece.delay_hi - piece.delay_lo) * t
        else:
            r = np.array([piece.lo, piece.hi])
            y = np.array([piece.delay_lo, piece.delay_hi])
        label = " / ".join(f"{name} {piece.key.count(t)}" for t, name in enumerate(result.tiers))
        ax.plot(r / scale, y, linewidth=2, label=label if k < 12 else None)
        if k:
            ax.axvline(piece.lo / scale, color="grey", linewidth=0.5, linestyle=":")
    what = {"uplink": "uplink", "downlink": "downlink", "rate": "link rate (both ways)",
            "batch": "batch"}[result.parameter]
    ax.set(xscale="log" if rates else "linear",
           xlabel=f"{what} ({'Mbit/s' if rates else 'samples'})",
           ylabel="training delay per iteration (ms)",
           title=f"{result.model}: the optimal partition at every {what} "
                 f"({plural(len(result.pieces), 'interval')})")
    ax.legend(title="layers per tier", fontsize="small")
    ax.grid(True, which="both", linewidth=0.3)
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, dpi=120, format="png")
    finally:
        plt.close(fig)
    return write_atomically(out, image.getvalue())
