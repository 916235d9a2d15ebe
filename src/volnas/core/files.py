"""Files written so that a crash never leaves a half-written one: every writer goes through
:func:`atomic_path` (a hidden sibling temporary, renamed over the target when complete).
Tensors are safetensors only; nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from volnas.core.faults import crash_point

# Held (flock) by the process that runs or resumes a run folder; see :func:`run_dir_lock`.
LOCK_NAME = ".volnas.lock"

# What a writer's temporary is called: ``.<name>.<8 random characters>.tmp`` beside the
# target (older versions' plots: ``.<stem>.<random>.png.tmp``).
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}(\.png)?\.tmp$")


def umask() -> int:
    """The process's file-creation mask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def follow_umask(path: str | Path, folder: bool = False) -> None:
    """Give a ``mkstemp``/``mkdtemp`` result (0600/0700) the mode a plain ``open``/``mkdir``
    would: 0666 (0777 for a folder) less the umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


@contextmanager
def atomic_path(path: Path | str, *, folder: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write (a file, or with ``folder`` a directory);
    when the block ends it is renamed over ``path`` with the umask's permissions, and on
    any error (or interrupt) it is removed. A kill leaves only the hidden temporary, which
    :func:`remove_stale_temporaries` finds by its name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        follow_umask(tmp, folder=folder)  # after writing: some writers replace the file
        crash_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


class FolderInUse(RuntimeError):
    """Another process holds the run folder (it runs or resumes the same run)."""


@contextmanager
def run_dir_lock(run_dir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` while a run writes it: a second process that
    runs or resumes the same folder meanwhile is refused instead of writing the same files.
    The lock is the OS's (``flock``), so a killed process leaves no stale lock behind."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): runs are not guarded
        enabled = False
    if not enabled:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise FolderInUse(f"{run_dir}: in use by another volnas process (pid {holder}); "
                              "wait for it to end, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what a killed atomic write left in ``run_dir`` (files and folders named like
    the writers' temporaries, in any subfolder); returns the removed paths."""
    removed = []
    for path in sorted(Path(run_dir).rglob(".*.tmp")):
        if path.is_symlink() or not _TEMPORARY.match(path.name):
            continue
        if path.is_file():
            path.unlink(missing_ok=True)
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            continue
        removed.append(path)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (written and fsynced before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> str:
    """Save tensors atomically as safetensors; returns the file's sha256."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, tmp, metadata=meta)
        digest = sha256_file(tmp)
    return digest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle, a truncated file) is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    with open(path, "rb") as f:
        head = f.read(16)
    # safetensors: an 8-byte header length, then the JSON header. torch.save writes a zip
    # ("PK"), older pickles start with the PROTO opcode 0x80 and a protocol number.
    if head[8:9] != b"{" and (head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in
                                                     (b"\x02", b"\x03", b"\x04", b"\x05"))):
        raise ValueError(
            f"{path}: this is a pickle/zip (torch.save) file, not safetensors; "
            "volnas never unpickles files it is handed"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a valid safetensors file ({e})") from e
