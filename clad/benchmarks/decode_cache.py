"""Decoded, resized images kept on disk, so every run, sweep cell and benchmark over the same
files decodes each image once.

An entry is one array (an image [3, S, S] uint8, a mask [1, S, S] bool, an MVTec 3D-AD input
[C, S, S] float32) computed from one or more files by one *recipe* (what was done to them:
the mode, the resize and crop sizes, the mask rule). Its key is the SHA-256 of the cache
version, the recipe, and for every source file its resolved path, size in bytes and
modification time in nanoseconds: a file that is replaced, touched or resized, another recipe,
or another code version (``CACHE_VERSION``) gives another key, so a stale entry is never read.

Files: ``<folder>/<key[:2]>/<key>.bin``, holding a magic line, a JSON header (shape, dtype,
CRC-32 of the data) and the raw array bytes. Each is written to a temporary file in its folder
and renamed into place (``atomic_write_bytes``), so concurrent processes can share a folder: a
reader sees a whole entry or none. An entry that is damaged (truncated, wrong shape or type,
CRC mismatch) is computed again and rewritten. A folder that cannot be written is reported once
and the images are decoded without the cache: the cache never stops a run.

The folder: ``dataset.decode_cache`` (``decode_cache_folder``): ``true`` (the default) is
``<user_cache_dir>/decoded`` (``$CLAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/clad``, else
``~/.cache/clad``), a path is that folder, ``false`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clad.benchmarks.user_cache import atomic_write_bytes, user_cache_dir

CACHE_VERSION = 1  # bump when what an entry holds for a recipe changes
MAGIC = b"clad-decoded-v1\n"
DTYPES = {"uint8": torch.uint8, "bool": torch.bool, "float32": torch.float32}

DecodeCacheSetting = bool | str | Path | None
"""``dataset.decode_cache``: True (the user's cache), False or None (off), or a folder."""


def decode_cache_folder(setting: DecodeCacheSetting) -> Path | None:
    """The cache folder for a ``dataset.decode_cache`` setting (None: no cache)."""
    if setting is None or setting is False:
        return None
    if setting is True:
        return user_cache_dir() / "decoded"
    return Path(setting).expanduser()


def parallel_workers(n_items: int) -> int:
    """Threads for decoding ``n_items`` files: every core this process may use (PIL's
    decoders and the resize release the GIL), at most one per item."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, n_items))


class DecodeCache:
    """Arrays computed from files, by key, in ``folder`` (module docstring).

    Attributes:
        hits, misses: entries read, entries computed (and written) so far.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0
        self.writable = True
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Without the lock: a dataset holding the cache goes to DataLoader worker processes
        started by ``spawn`` (sweep workers), which pickle it."""
        state = self.__dict__.copy()
        del state["lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    @classmethod
    def from_setting(cls, setting: DecodeCacheSetting) -> DecodeCache | None:
        folder = decode_cache_folder(setting)
        return None if folder is None else cls(folder)

    def key(self, sources: Sequence[Path], recipe: str) -> str | None:
        """SHA-256 (hex) of the version, the recipe and each source's resolved path, size and
        modification time (ns); None when a source cannot be read (the reader then names it)."""
        digest = hashlib.sha256(f"{CACHE_VERSION}\n{recipe}\n".encode())
        for source in sources:
            try:
                stat = os.stat(source)
            except OSError:
                return None
            digest.update(
                f"{Path(source).resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode()
            )
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.bin"

    def read(self, key: str, shape: Sequence[int], dtype: torch.dtype) -> Tensor | None:
        """The entry's array when it is there, whole and of ``shape`` and ``dtype``; else None."""
        try:
            data = self.path(key).read_bytes()
        except OSError:
            return None
        if not data.startswith(MAGIC):
            return None
        end = data.find(b"\n", len(MAGIC))
        try:
            header = json.loads(data[len(MAGIC) : end])
            body = memoryview(data)[end + 1 :]
            wanted = DTYPES[header["dtype"]]
            if wanted != dtype or list(header["shape"]) != list(shape):
                return None
            if zlib.crc32(body) != header["crc32"]:
                return None
            array = np.frombuffer(body, dtype=np.uint8 if dtype == torch.bool else header["dtype"])
            if array.size != int(np.prod(shape)):
                return None
        except (ValueError, KeyError, TypeError):
            return None
        tensor = torch.from_numpy(array.copy()).view(*shape)
        return tensor.bool() if dtype == torch.bool else tensor

    def write(self, key: str, tensor: Tensor) -> None:
        """Store ``tensor`` under ``key`` (atomically). A folder that cannot be written turns
        writing off for this cache with one line on stderr."""
        if not self.writable:
            return
        names = {v: k for k, v in DTYPES.items()}
        array = tensor.detach().cpu().contiguous()
        body = (array.to(torch.uint8) if array.dtype == torch.bool else array).numpy().tobytes()
        header = {
            "shape": list(array.shape),
            "dtype": names[array.dtype],
            "crc32": zlib.crc32(body),
        }
        try:
            atomic_write_bytes(self.path(key), MAGIC + json.dumps(header).encode() + b"\n" + body)
        except OSError as err:
            with self.lock:  # decoding threads share the cache: one line, not one per thread
                if not self.writable:
                    return
                self.writable = False
            print(
                f"[clad] decode cache {self.folder}: cannot write there ({err.strerror or err}); "
                "decoding without it (set dataset.decode_cache to a writable folder, or false)",
                file=sys.stderr,
            )

    def fetch(
        self,
        sources: Sequence[Path],
        recipe: str,
        shape: Sequence[int],
        dtype: torch.dtype,
        compute: Callable[[], Tensor],
    ) -> Tensor:
        """The array of ``recipe`` applied to ``sources``: read from the cache, or computed
        (``compute()``, which must return ``shape`` and ``dtype``) and stored."""
        key = self.key(sources, recipe)
        if key is None:
            return compute()
        found = self.read(key, shape, dtype)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        tensor = compute()
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise ValueError(
                f"decode cache: recipe {recipe!r} gave {tuple(tensor.shape)} {tensor.dtype}, "
                f"expected {tuple(shape)} {dtype}"
            )
        self.write(key, tensor)
        return tensor
