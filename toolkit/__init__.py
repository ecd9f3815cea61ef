"""splitcut: find where to split a neural network between a device and an edge server."""

from toolkit.errors import ToolkitError

__version__ = "0.1.0"
__all__ = ["ToolkitError", "__version__"]
