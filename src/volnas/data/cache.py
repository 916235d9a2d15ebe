"""Disk cache of prepared stacks, keyed by the source file and the preprocessing settings.

Decoding a DICOM series or a PNG folder costs far more than a training step on small
inputs; after the first epoch every scan comes from here instead. A cached entry is
invalidated when the source changes (size or modification time of its files) or when any
setting that shapes the stack changes (a different settings hash is a different folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from volnas.core.files import atomic_path
from volnas.data.preprocess import PreprocessConfig, StackGeometry, prepare_stack
from volnas.data.readers import read_scan


def default_cache_dir() -> Path:
    """``$VOLNAS_CACHE_DIR`` or ``~/.cache/volnas``."""
    env = os.environ.get("VOLNAS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "volnas"


def source_signature(path: str) -> str:
    """Cheap fingerprint of a scan's files: name, size and mtime of each."""
    base = path.split("#", 1)[0]
    p = Path(base)
    parts: list[str] = [path]
    if p.is_dir():
        for entry in sorted(os.scandir(p), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                parts.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
    elif p.exists():
        st = p.stat()
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


class StackCache:
    """Prepared (N, H, W) stacks on disk, with a bounded in-memory layer in front."""

    def __init__(
        self, cfg: PreprocessConfig, root: Path | None = None, memory_limit_mb: float = 1024.0
    ) -> None:
        self.cfg = cfg
        self.root = (root or default_cache_dir()) / cfg.stack_key()
        self.memory_limit = int(memory_limit_mb * 2**20)
        self._mem: dict[str, tuple[np.ndarray, StackGeometry]] = {}
        self._mem_bytes = 0
        self._sig: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    def _key(self, path: str) -> str:
        if path not in self._sig:
            self._sig[path] = source_signature(path)
        return self._sig[path]

    def get(self, path: str, fmt: str | None = None) -> tuple[np.ndarray, StackGeometry]:
        """The prepared stack of one scan: memory, else disk, else read and prepare it."""
        key = self._key(path)
        if key in self._mem:
            self.hits += 1
            return self._mem[key]
        npy = self.root / key[:2] / f"{key}.npy"
        meta = npy.with_suffix(".json")
        if npy.exists() and meta.exists():
            try:
                stack = np.load(npy, allow_pickle=False).astype(np.float32)
                g = json.loads(meta.read_text())
                geom = StackGeometry(
                    tuple(g["source_shape"]), tuple(g["resized_hw"]), tuple(g["crop_offset"])
                )
                self.hits += 1
                self._remember(key, stack, geom)
                return stack, geom
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is rebuilt below
        self.misses += 1
        stack, geom = prepare_stack(read_scan(path, fmt), self.cfg)
        # Round as stored, so a scan reads the same on the first epoch as on later ones.
        stack = stack.astype(np.float16).astype(np.float32)
        self._store(npy, meta, stack, geom)
        self._remember(key, stack, geom)
        return stack, geom

    def _remember(self, key: str, stack: np.ndarray, geom: StackGeometry) -> None:
        if self._mem_bytes + stack.nbytes <= self.memory_limit:
            self._mem[key] = (stack, geom)
            self._mem_bytes += stack.nbytes

    def _store(self, npy: Path, meta: Path, stack: np.ndarray, geom: StackGeometry) -> None:
        npy.parent.mkdir(parents=True, exist_ok=True)
        for target, write in (
            (npy, lambda f: np.save(f, stack.astype(np.float16), allow_pickle=False)),
            (
                meta,
                lambda f: f.write(
                    json.dumps(
                        {
                            "source_shape": geom.source_shape,
                            "resized_hw": geom.resized_hw,
                            "crop_offset": geom.crop_offset,
                        }
                    ).encode()
                ),
            ),
        ):
            with atomic_path(target) as tmp, open(tmp, "wb") as f:
                write(f)
