"""Shared fixtures. Real data lives in ../shared/data beside the checkout (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VOLNAS_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data is absent in this checkout)")
    return path


@pytest.fixture
def adrenal_npz() -> Path:
    """AdrenalMNIST3D 28^3 (official MedMNIST release)."""
    return _need(SHARED_DATA / "medmnist3d" / "adrenalmnist3d.npz")


@pytest.fixture
def adrenal64_npz() -> Path:
    return _need(SHARED_DATA / "medmnist3d" / "adrenalmnist3d_64.npz")


@pytest.fixture
def dicom_series() -> Path:
    """One real JPEG-lossless chest CT series (154 slices, 512x512)."""
    return _need(SHARED_DATA / "covid-ct-md" / "normal001")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write to the user's ~/.cache/volnas."""
    monkeypatch.setenv("VOLNAS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_genotype():
    """A function saving a small searched-style network (medpipe, every searchable layer
    'skip') at the path it is given; returns its ``genotype:FILE`` model name."""
    from volnas.models.genotype import Genotype
    from volnas.models.spaces import layer_specs

    def make(path: Path) -> str:
        ops = ["skip" if s.kind == "normal" else ("conv_s2" if i < 3 else "conv_s1")
               for i, s in enumerate(layer_specs("medpipe"))]
        Genotype("medpipe", ops).save(path)
        return f"genotype:{path}"

    return make


if os.environ.get("PYTEST_XDIST_WORKER"):  # under `pytest -n auto` (make test)
    import torch

    # one thread a worker: the workers share the cores, and a thread that waits for a
    # busy core costs small 3D ops milliseconds each
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    # xdist gives its workers a 80x24 terminal size; output here is a log, as without it
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
