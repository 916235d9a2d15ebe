"""volnas command-line entry point (filled in by the CLI module)."""


def main() -> None:
    raise SystemExit("volnas CLI not built yet")
