"""MedMNIST 3D npz: ``file.npz#split/index`` picks one volume (uint8 D x H x W).

Every array's shape, read from its ``.npy`` header, must fit the voxel budget before the
file is loaded. The arrays are loaded once per (file, mtime, size) and kept read-only.
"""

from __future__ import annotations

import functools
import re
import zipfile
from pathlib import Path

import numpy as np

from volnas.data.readers.base import ScanReader, _check_slices, _finite_or_raise
from volnas.data.volume import DataError, Volume, check_voxel_budget

NPZ_SPLITS = ("train", "val", "test")


def split_npz_path(path: str | Path) -> tuple[Path, str | None, int | None]:
    """``file.npz#train/12`` -> (file, "train", 12); a bare file gives (file, None, None)."""
    s = str(path)
    if "#" not in s:
        return Path(s), None, None
    base, _, frag = s.rpartition("#")
    m = re.fullmatch(r"([A-Za-z]+)/(\d+)", frag)
    if not m:
        raise DataError(base, f"bad npz item {frag!r}; expected '<split>/<index>', e.g. train/12")
    return Path(base), m.group(1), int(m.group(2))


def _npz_check_shapes(path: str) -> None:
    """Every array's shape from its .npy header within the voxel budget, before loading."""
    from numpy.lib import format as npy

    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = npy.read_magic(f)
                    if version == (1, 0):
                        shape, _, _ = npy.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, _ = npy.read_array_header_2_0(f)
                    else:
                        continue  # np.load reports an unknown version
                check_voxel_budget(path, shape, f"shape of {info.filename[:-4]!r}")
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(path, f"unreadable npz file ({type(e).__name__}: {e})") from e


@functools.lru_cache(maxsize=4)
def _npz_cached(resolved: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    """All arrays of one npz, loaded once per (path, mtime, size); read-only."""
    _npz_check_shapes(resolved)
    try:
        with np.load(resolved, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(resolved, f"unreadable npz file ({type(e).__name__}: {e})") from e
    for a in arrays.values():
        a.flags.writeable = False
    return arrays


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    p = path.resolve()
    try:
        st = p.stat()
    except OSError as e:
        raise DataError(path, f"cannot open npz file ({e})") from e
    if st.st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    return _npz_cached(str(p), st.st_mtime_ns, st.st_size)


def load_npz_split(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MedMNIST 3D npz -> {split: (images uint8 N x D x H x W, labels int64 N)}."""
    p, _, _ = split_npz_path(path)
    arrays = _npz_arrays(p)
    out = {}
    for split in NPZ_SPLITS:
        for key in (f"{split}_images", f"{split}_labels"):
            if key not in arrays:
                raise DataError(p, f"missing key {key!r} (has {sorted(arrays)})")
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 4:
            raise DataError(p, f"{split}_images must be N x D x H x W, got shape {images.shape}")
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                p,
                f"{split}_labels shape {arrays[f'{split}_labels'].shape} does not match "
                f"{images.shape[0]} images (multi-label files are not supported)",
            )
        out[split] = (images, labels.astype(np.int64))
    return out


def read_npz(path: str | Path) -> Volume:
    """One MedMNIST volume addressed as ``file.npz#split/index``."""
    p, split, index = split_npz_path(path)
    if split is None or index is None:
        raise DataError(p, "an npz scan needs '#<split>/<index>', e.g. file.npz#train/0")
    splits = load_npz_split(p)
    if split not in splits:
        raise DataError(p, f"unknown split {split!r}; expected one of {NPZ_SPLITS}")
    images, labels = splits[split]
    if not 0 <= index < images.shape[0]:
        raise DataError(p, f"index {index} out of range for {split} (0..{images.shape[0] - 1})")
    array = images[index].astype(np.float32)
    _check_slices(array.shape[0], f"{p}#{split}/{index}")
    _finite_or_raise(array, None, f"{p}#{split}/{index}")
    return Volume(
        array=array,
        affine=np.eye(4),
        is_hu=False,
        source=f"{p}#{split}/{index}",
        meta={
            "format": "npz",
            "split": split,
            "index": index,
            "label": int(labels[index]),
            "dtype": str(images.dtype),
            "spacing": (1.0, 1.0, 1.0),
        },
    )


class NpzItemReader(ScanReader):
    """One volume of a MedMNIST 3D npz, addressed as ``file.npz#split/index``.

    Not discovered inside class folders: a whole npz is indexed as a data set of its own.
    """

    name = "npz"
    label = ".npz#split/i"
    discover = False

    def detect(self, path: Path) -> bool:
        s = str(path)
        return ".npz#" in s or s.lower().endswith(".npz")

    def read(self, path: str | Path) -> Volume:
        return read_npz(path)

    def count_slices(self, path: str | Path) -> int:
        p, split, _ = split_npz_path(path)
        splits = load_npz_split(p)
        if split not in splits:
            raise DataError(p, f"an npz scan needs '#<split>/<index>' with split in {NPZ_SPLITS}")
        return int(splits[split][0].shape[1])
