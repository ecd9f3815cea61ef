"""The package's exceptions: the library raises them; only the CLI turns them into exits."""


class ToolkitError(Exception):
    """Base class of every error splitcut reports to a user (one line, exit code 2)."""


class ModelError(ToolkitError):
    """A model file is missing, unreadable or not a valid computation graph."""


class ProfileError(ToolkitError):
    """A device, server or link profile is unknown or malformed."""


class ScenarioError(ToolkitError):
    """A scenario's numbers make no sense (zero bandwidth, batch < 1, ...)."""


class PartitionError(ToolkitError):
    """No valid partition exists, or a partition failed validation."""


class NotStoredError(ToolkitError):
    """A model (or its blocks) is not in the store: ingest it first."""
