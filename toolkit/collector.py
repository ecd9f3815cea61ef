"""Python's cyclic garbage collector paused while a large graph is built or walked.

Reading, costing, block detection and solving allocate millions of small objects that live
on (layers, tensors, tuples), and each of the collector's full passes scans every one of them:
measured, 35-50% of costing, block detection and the solve at 50,000 nodes, 10-20% of
reading the ONNX file into layers (`toolkit.onnx.reader`). What they build
holds no reference cycles, so reference counting frees it all; the collector comes back on
when the outermost paused call returns.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def collector_paused(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` with the cyclic collector off while it runs (nested calls leave it to the outer)."""

    @functools.wraps(fn)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return paused
