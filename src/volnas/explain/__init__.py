"""Explanations: saliency maps (CAM family, occlusion, gradients) on the source scan's grid,
files, faithfulness (lesion masks, deletion / insertion curves) and the sanity check."""

from __future__ import annotations

from volnas.explain.api import explain_scans, explain_test_scans, explain_volumes
from volnas.explain.cam import CAM, ExplainError, GradCAM, GradCAMpp
from volnas.explain.faithfulness import (
    energy_fraction,
    faithfulness,
    pointing_game,
    saliency_curve,
)
from volnas.explain.geometry import to_source_grid
from volnas.explain.methods import DEFAULT_METHOD, list_methods, make_explainer
from volnas.explain.sanity import sanity_check

__all__ = [
    "CAM",
    "DEFAULT_METHOD",
    "ExplainError",
    "GradCAM",
    "GradCAMpp",
    "energy_fraction",
    "explain_scans",
    "explain_test_scans",
    "explain_volumes",
    "faithfulness",
    "list_methods",
    "make_explainer",
    "pointing_game",
    "saliency_curve",
    "sanity_check",
    "to_source_grid",
]
