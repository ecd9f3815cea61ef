"""Writing people's output files safely."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from toolkit.errors import ToolkitError


def write_atomically(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace` it
    into place: readers never see half a file, and an existing file or a planted symbolic
    link at `path` is replaced, never written through."""
    out = Path(path)
    staged: str | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".splitcut-",
                                         suffix=out.suffix, delete=False) as f:
            staged = f.name
            f.write(data)
        os.chmod(staged, 0o666 & ~_umask())  # as open() would make it, not tempfile's 0600
        os.replace(staged, out)
    except OSError as exc:
        if staged is not None:
            with contextlib.suppress(OSError):
                os.unlink(staged)
        raise ToolkitError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
