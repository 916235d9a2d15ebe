"""Slice folders: a folder of ``.png`` / ``.jpg`` / ``.jpeg`` / ``.tif`` / ``.tiff`` slices.

Slices are ordered by natural sort of the file names (``2 < 10``). Stored values are kept
(8- and 16-bit alike, no rescaling). Colour images become grey: if R == G == B the channel
is taken as is, otherwise luma ``0.299 R + 0.587 G + 0.114 B``; alpha is dropped. Affine is
the identity (unit spacing); ``is_hu`` is False. Other files in the folder are ignored and
listed in ``meta["ignored"]``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from volnas.data.readers.base import (
    ScanCheck,
    ScanReader,
    _check_nonempty,
    _check_slices,
    _finite_or_raise,
    _odd_one_out,
    is_hidden,
    natural_key,
)
from volnas.data.volume import DataError, Volume, check_voxel_budget, max_voxels

SLICE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")


def _check_name_pattern(folder: Path, files: list[str]) -> None:
    """In a numbered series (slice_001.png, ...) every image must follow the same pattern.

    Another image in the folder (a preview.jpg, "slice_7 (copy).png") would otherwise be
    stacked in as a slice wherever its name sorts.
    """
    patterns = Counter(_NUMBER.sub("#", n.lower()) for n in files)
    main, count = patterns.most_common(1)[0]
    if "#" not in main or len(patterns) == 1:
        return
    odd = [n for n in files if _NUMBER.sub("#", n.lower()) != main]
    example = next(n for n in files if n not in odd)
    shown = ", ".join(odd[:5]) + (f", ... ({len(odd)} files)" if len(odd) > 5 else "")
    raise DataError(
        folder / odd[0],
        f"not named like the folder's {count} numbered slices ({example}, ...): {shown}; "
        "move other images out of the slice folder",
    )


def _slice_files(folder: Path) -> tuple[list[Path], list[str]]:
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    files, ignored = [], []
    for e in os.scandir(folder):
        if not e.is_file() or is_hidden(e.name):
            continue
        (files if e.name.lower().endswith(SLICE_EXTS) else ignored).append(e.name)
    if not files:
        raise DataError(folder, "empty folder (no .png/.jpg/.tif slices)")
    files.sort(key=lambda n: (natural_key(n), n))
    _check_name_pattern(folder, files)
    for a, b in zip(files, files[1:], strict=False):
        if natural_key(a) == natural_key(b):
            raise DataError(folder / b, f"ambiguous slice order: same number as {a}")
    return [folder / n for n in files], sorted(ignored)


def _to_grey(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[2] in (2, 3, 4):
        if a.shape[2] == 2:  # grey + alpha
            return a[..., 0]
        rgb = a[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0]
        rgb = rgb.astype(np.float32)
        return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    raise ValueError(f"unsupported image array shape {a.shape}")


def _image_size(path: Path, verify: bool = False) -> tuple[int, int]:
    """(H, W) as the file's header claims it, without decoding pixels.

    ``verify``: also check that the file decodes structurally (and decode float TIFF
    slices, which can hold NaN/inf).
    """
    _check_nonempty(path)
    try:
        if path.name.lower().endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                page = tf.pages[0]
                shape, axes = page.shape, page.axes
                if verify and page.dtype is not None and page.dtype.kind == "f":
                    bad = int((~np.isfinite(page.asarray())).sum())
                    if bad:
                        raise DataError(path, f"{bad} NaN/inf value(s)")
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            if verify:
                im.verify()
        return int(h), int(w)
    except DataError:
        raise
    except Exception as e:
        raise DataError(path, f"unreadable image ({type(e).__name__}: {e})") from e


def _read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """One slice as a 2D array of its stored values (any dtype).

    ``max_pixels``: refuse (from the header, before decoding) a slice claiming more pixels.
    """
    _check_nonempty(path)
    if max_pixels is not None:
        h, w = _image_size(path)
        if h * w > max_pixels:
            raise DataError(
                path,
                f"claimed slice size {h} x {w} is beyond the voxel budget ({max_pixels:,} "
                "pixels per slice for this folder; set $VOLNAS_MAX_VOXELS to raise it)",
            )
    try:
        if path.name.lower().endswith((".tif", ".tiff")):
            import tifffile

            a = np.asarray(tifffile.imread(path))
            if a.ndim == 3 and a.shape[0] in (2, 3, 4) and a.shape[-1] not in (2, 3, 4):
                a = np.moveaxis(a, 0, -1)  # planar colour
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode == "CMYK":
                    im = im.convert("RGB")
                im.load()
                a = np.asarray(im)
        return _to_grey(a)
    except DataError:
        raise
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, zlib.error...
        raise DataError(path, f"unreadable image, cannot decode it ({type(e).__name__}: {e})") from e


def _slice_budget(folder: Path, files: list[Path]) -> int:
    """Pixels allowed per slice; refuses the folder when its first header is over budget."""
    h, w = _image_size(files[0])
    check_voxel_budget(
        files[0], (len(files), h, w), f"shape ({len(files)} slices in {folder.name}/ x H x W)"
    )
    return max_voxels() // len(files)


def read_slices(path: str | Path) -> Volume:
    """A folder of 2D slices (PNG / JPEG / TIFF) as one volume."""
    folder = Path(path)
    files, ignored = _slice_files(folder)
    _check_slices(len(files), files[0] if len(files) == 1 else folder)
    per_slice = _slice_budget(folder, files)
    first = _read_image(files[0], per_slice)
    out = np.empty((len(files), *first.shape), dtype=np.float32)
    dtypes = {str(first.dtype)}
    out[0] = first
    for i, f in enumerate(files[1:], start=1):
        a = _read_image(f, per_slice)
        if a.shape != first.shape:
            _odd_one_out([_image_size(g, verify=True) for g in files], files, "slice sizes")
            raise DataError(
                f, f"mixed slice sizes: this file is {a.shape}, {files[0].name} is {first.shape}"
            )
        dtypes.add(str(a.dtype))
        out[i] = a
    _finite_or_raise(out, files, folder)
    return Volume(
        array=out,
        affine=np.eye(4),
        is_hu=False,
        source=str(folder),
        meta={
            "format": "slices",
            "files": [f.name for f in files],
            "dtype": sorted(dtypes),
            "spacing": (1.0, 1.0, 1.0),
            "ignored": ignored,
        },
    )


def check_slices(path: str | Path) -> int:
    """Verify a slice folder: sizes from the headers, then every slice decoded (one at a
    time) and checked for its size and NaN/inf; returns the slice count."""
    folder = Path(path)
    files, _ = _slice_files(folder)
    _check_slices(len(files), files[0] if len(files) == 1 else folder)
    per_slice = _slice_budget(folder, files)
    shapes = [_image_size(f) for f in files]
    _odd_one_out(shapes, files, "slice sizes")
    for f, shape in zip(files, shapes, strict=True):
        a = _read_image(f, per_slice)
        if a.shape != shape:
            raise DataError(f, f"decoded slice is {a.shape}, its header says {shape}")
        if a.dtype.kind == "f":
            _finite_or_raise(a[None], [f], folder)
    return len(files)


class SliceFolderReader(ScanReader):
    """A folder of 2D slice images (PNG / JPEG / TIFF)."""

    name = "slices"
    label = "slice images"
    folder = True
    exts = SLICE_EXTS

    def read(self, path: str | Path) -> Volume:
        return read_slices(path)

    def count_slices(self, path: str | Path) -> int:
        return len(_slice_files(Path(path))[0])

    def check_quick(self, path: str | Path) -> ScanCheck:
        return ScanCheck(self.name, check_slices(path))
