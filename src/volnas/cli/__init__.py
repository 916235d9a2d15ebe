"""Command-line interface (``volnas``)."""
