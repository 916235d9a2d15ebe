"""The crash hook the resume tests rely on: it kills exactly at the named pass."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = (
    "from volnas.core.faults import crash_point\n"
    "for i in range(1, 6):\n"
    "    print(i, flush=True)\n"
    "    crash_point('loop')\n"
)


def _run(env_value: str | None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != "VOLNAS_CRASH_AT"}
    if env_value is not None:
        env["VOLNAS_CRASH_AT"] = env_value
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=60)


def test_crash_point_kills_at_the_named_pass() -> None:
    done = _run(None)
    assert done.returncode == 0 and done.stdout.split() == ["1", "2", "3", "4", "5"]
    killed = _run("other,loop#3")
    assert killed.returncode == -9
    assert killed.stdout.split() == ["1", "2", "3"]
    first = _run("loop")
    assert first.returncode == -9 and first.stdout.split() == ["1"]
