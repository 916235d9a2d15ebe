from __future__ import annotations

import pytest
from tiny_search import TINY

from volnas.models.spaces import SPACES, SpaceDef


@pytest.fixture
def tiny_space(monkeypatch: pytest.MonkeyPatch) -> str:
    """The tiny space, registered as 'tiny-strides' for one test."""
    monkeypatch.setitem(SPACES, "tiny-strides", SpaceDef(*TINY))
    return "tiny-strides"
