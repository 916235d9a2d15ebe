"""Placeholder for a later stage of the pipeline."""
