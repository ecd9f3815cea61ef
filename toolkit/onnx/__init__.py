"""ONNX at the edge of the toolkit: the only package that imports `onnx`.

`load` reads a file safely (size and text checks, external data only from inside the model's
folder); `shapes` gives every tensor a size and type; `scopes` reads PyTorch exporters' module
metadata; `reader` turns a model into a `LayerGraph`; `split` writes a partition as runnable
ONNX files, one per tier.
"""

from toolkit.onnx.load import buffer_names, layer_names, load_external_data, load_model
from toolkit.onnx.reader import (
    NOT_TRAINABLE_INPUTS,
    READER_VERSION,
    NodeRoles,
    dft_axis,
    node_roles,
    qualified_op,
    read_model,
    read_onnx,
)
from toolkit.onnx.scopes import module_path
from toolkit.onnx.shapes import runtime_shapes

__all__ = [
    "NOT_TRAINABLE_INPUTS", "READER_VERSION", "NodeRoles", "buffer_names", "dft_axis",
    "layer_names", "load_external_data", "load_model", "module_path", "node_roles",
    "qualified_op", "read_model", "read_onnx", "runtime_shapes",
]
