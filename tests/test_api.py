"""The public Python API: a notebook user's whole path, model to explanation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import volnas.api as vn
from volnas.data.synth import synthesize
from volnas.models.genotype import Genotype
from volnas.models.spaces import layer_specs


def test_create_model_by_name_genotype_and_path(tmp_path: Path) -> None:
    net = vn.create_model("resnet3d_18", num_classes=3).eval()
    assert net(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 3)
    ops = ["skip" if s.kind == "normal" else s.candidates[0] for s in layer_specs("covidnet3d-s")]
    geno = Genotype("covidnet3d-s", ops)
    geno.save(tmp_path / "g.json")
    counts = {sum(p.numel() for p in m.parameters())
              for m in (vn.create_model(geno), vn.create_model(tmp_path / "g.json"),
                        vn.create_model(f"genotype:{tmp_path / 'g.json'}"))}
    assert len(counts) == 1
    assert "resnet3d_18" in vn.list_models("resnet3d_*")
    with pytest.raises(KeyError, match="resnet3d_18"):
        vn.create_model("resnet3d_9000")


def test_train_export_predict_explain_evaluate(tmp_path: Path) -> None:
    res = synthesize(tmp_path / "d", scans=24, fmt="npz", classes=2, shape=(8, 16, 16), seed=1,
                     difficulty="easy")
    data = next(res.out.glob("*.npz"))
    settings = {"data": str(data), "model": "resnet3d_18", "epochs": 2, "batch_size": 4,
                "slices": 8, "size": (16, 16), "device": "cpu"}
    metrics = vn.train(settings, tmp_path / "run", quiet=True)
    assert metrics["n_scans"] > 0 and 0 <= metrics["accuracy"] <= 1
    with pytest.raises(vn.RunDirError, match="already holds a run"):
        vn.train(settings, tmp_path / "run", quiet=True)  # never overwritten
    # a resume continues the saved settings; one that would change the run is refused
    assert vn.train({}, tmp_path / "run", resume=True, quiet=True)["accuracy"] == metrics["accuracy"]
    with pytest.raises(ValueError, match="lr"):
        vn.train({"lr": 0.5}, tmp_path / "run", resume=True, quiet=True)

    bundle = vn.export(tmp_path / "run", tmp_path / "bundle")
    assert bundle.classes == ["0", "1"] and bundle.metrics["accuracy"] == metrics["accuracy"]
    scans = [f"{data}#test/{i}" for i in range(3)]
    rows = vn.predict(tmp_path / "bundle", scans)
    assert [r["scan"] for r in rows] == [Path(s).name for s in scans] or len(rows) == 3
    assert all(np.isclose(sum(r["probabilities"].values()), 1.0, atol=1e-5) for r in rows)
    with pytest.raises(vn.PredictionError, match="missing.nii.gz"):
        vn.predict(bundle, [*scans, str(tmp_path / "missing.nii.gz")])
    assert len(vn.predict(bundle, [*scans, str(tmp_path / "missing.nii.gz")], strict=False)) == 3

    explained = vn.explain(tmp_path / "bundle", scans[:1], tmp_path / "expl", quiet=True)
    assert len(explained) == 1 and (tmp_path / "expl").is_dir()
    ev = vn.evaluate(tmp_path / "run", quiet=True)
    assert ev["accuracy"] == metrics["accuracy"]
    assert Path(ev["evaluation_dir"]).parent == tmp_path / "run" / "evaluations"


def test_settings_as_mapping_config_or_yaml(tmp_path: Path) -> None:
    from volnas.api import _config

    flat, given = _config({"space": "medpipe", "slices": 12, "size": (24, 24)}, vn.SearchConfig)
    assert flat.space == "medpipe" and flat.preprocess.slices == 12
    assert given == {"space": "medpipe", "preprocess": {"slices": 12, "size": (24, 24)}}
    (tmp_path / "s.yaml").write_text("space: medpipe\npreprocess: {slices: 12, size: [24, 24]}\n")
    from_yaml, _ = _config(tmp_path / "s.yaml", vn.SearchConfig)
    assert from_yaml == flat
    assert _config(flat, vn.SearchConfig)[0] == flat
    with pytest.raises(ValueError, match="epochs"):
        _config({"epochs": 0}, vn.TrainConfig)
    with pytest.raises(ValueError, match="unknown search space"):
        vn.search({"data": "x.npz", "space": "nasnet"}, tmp_path / "s", quiet=True)
    assert not (tmp_path / "s").exists()
