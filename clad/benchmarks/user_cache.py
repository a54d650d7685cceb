"""clad's folder in the user's cache, and the atomic file write of what is cached there.

Both caches of decoded data use them: the decoded images (``clad.benchmarks.decode_cache``) and
the machine sounds' log-mel features (``clad.benchmarks.audio_features``). The writer lives here
because ``clad.benchmarks`` may not import ``clad.tracking`` (``tests/test_architecture.py``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def user_cache_dir() -> Path:
    """clad's cache folder: ``$CLAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/clad``, else
    ``~/.cache/clad``."""
    if os.environ.get("CLAD_CACHE_DIR"):
        return Path(os.environ["CLAD_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "clad"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace``: a reader (another process of a sweep, a later run) sees the old file, the
    new one or none, never a part. The folder is made when missing.

    Raises:
        OSError: when the folder or the file cannot be written (nothing is left behind).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
