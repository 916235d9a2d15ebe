"""Deployment: self-contained model bundles and prediction on new scans."""

from __future__ import annotations

from volnas.deploy.bundle import Bundle, BundleError, export_bundle, load_bundle
from volnas.deploy.predict import Failure, predict_scans, write_predictions

__all__ = [
    "Bundle",
    "BundleError",
    "Failure",
    "export_bundle",
    "load_bundle",
    "predict_scans",
    "write_predictions",
]
