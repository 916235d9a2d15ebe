"""Explanations: CAM / Grad-CAM maps on the source scan's grid, files, faithfulness."""

from __future__ import annotations

from volnas.explain.api import explain_scans, explain_test_scans, explain_volumes
from volnas.explain.cam import CAM, ExplainError, GradCAM, GradCAMpp, make_explainer
from volnas.explain.faithfulness import energy_fraction, faithfulness, pointing_game
from volnas.explain.geometry import to_source_grid

__all__ = [
    "CAM",
    "ExplainError",
    "GradCAM",
    "GradCAMpp",
    "energy_fraction",
    "explain_scans",
    "explain_test_scans",
    "explain_volumes",
    "faithfulness",
    "make_explainer",
    "pointing_game",
    "to_source_grid",
]
