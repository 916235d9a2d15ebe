"""benchmarks/protocol20_adrenal28.sh stays runnable as the code moves: its models, search
names and settings are checked by a report-only pass, which trains nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from volnas.models.genotype import Genotype
from volnas.models.profile import count_params

REPO = Path(__file__).resolve().parents[2]


def test_protocol_script_plans_27_valid_cells(adrenal_npz: Path, tmp_path: Path) -> None:
    volnas = Path(sys.executable).parent / "volnas"
    if not volnas.is_file() or shutil.which("bash") is None:
        pytest.skip("needs bash and the volnas entry point beside this Python")
    out = tmp_path / "p20"
    env = {"PATH": "/usr/bin:/bin", "REPORT_ONLY": "1", "OUT": str(out), "VOLNAS": str(volnas),
           "PYTHON": sys.executable, "DATA": str(adrenal_npz), "HOME": str(tmp_path)}
    res = subprocess.run(["bash", "benchmarks/protocol20_adrenal28.sh"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names[:2] == ["resnet3d_18", "densenet3d_121"] and len(names) == 9
    assert {"covidnet3d-s_random", "covidnet3d-s_evolution", "medpipe_differentiable"} <= set(names)
    assert all(r["seeds"] == [0, 1, 2] and r["n_done"] == 0 for r in report["rows"])
    assert report["complete"] is False
    ceiling = sorted((out / "ceiling").glob("covidnet3d-s-*.json"))
    assert len(ceiling) == 3
    for path in ceiling:  # the space's members, 28^3 strides fitted with the cell1 rule
        geno = Genotype.load(path)
        assert geno.extra["stride_rule"] == "cell1" and geno.ops[1] == "conv_s1"
        assert count_params(geno.build()) < 6e6
