"""The step-memory estimator, against measured peaks, and the refusal it gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from volnas.search.supernet import SuperNet
from volnas.training.memory import (
    GB,
    SEARCH_FLAGS,
    StepEstimate,
    available_bytes,
    check_fits,
    check_run_memory,
    estimate_step_bytes,
    largest_path,
    measure_activations,
    probe_shape,
)

REPO = Path(__file__).resolve().parents[2]


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
        nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 2),
    )  # fmt: skip


def test_estimate_scales_with_batch_and_voxels() -> None:
    torch.manual_seed(0)
    net = small_net()
    b2 = estimate_step_bytes(net, (1, 8, 32, 32), 2)
    b6 = estimate_step_bytes(net, (1, 8, 32, 32), 6)
    assert b6.activations == pytest.approx(3 * b2.activations, rel=1e-6)
    assert b6.fixed == b2.fixed  # parameters and optimiser state do not grow with the batch
    # Adam: parameters + gradients + two moments
    n = sum(p.numel() for p in net.parameters()) * 4
    assert (b2.params, b2.state) == (n, 3 * n)
    assert estimate_step_bytes(net, (1, 8, 32, 32), 2, unrolled=True).state == 6 * n
    assert estimate_step_bytes(net, (1, 8, 32, 32), 2, optimizer="sgd").state == 2 * n
    # 4x the voxels, measured on a probe of the same size: 4x the activations
    big = estimate_step_bytes(net, (1, 16, 64, 32), 2)
    assert probe_shape((1, 16, 64, 32)) == (1, 16, 16, 32)
    assert big.activations == pytest.approx(4 * b2.activations, rel=0.02)
    # scaling from the probe agrees with measuring at the full size
    full, _ = measure_activations(net, (1, 16, 64, 32), batch_size=2)
    assert big.activations == pytest.approx(full, rel=0.05)
    assert b2.at(6).activations == pytest.approx(b6.activations, rel=1e-6)


def test_saved_bytes_are_the_tensors_backward_keeps() -> None:
    """One conv (input saved), BatchNorm (its input), ReLU (its output): three activations."""
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU())
    saved, largest = measure_activations(net, (1, 4, 8, 8), channels_last=False, batch_size=2)
    x, act = 2 * 1 * 256 * 4, 2 * 4 * 256 * 4
    # BatchNorm also keeps its per-channel mean and inverse std (4 floats each)
    assert saved == x + 2 * act + 2 * 4 * 4
    assert largest == act


def test_probe_leaves_the_model_and_random_stream_as_they_were() -> None:
    torch.manual_seed(0)
    net = SuperNet("medpipe", 1, 2)
    net.eval()
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm3d))
    mean = bn.running_mean.clone()
    state = torch.get_rng_state()
    measure_activations(net, (1, 8, 16, 16), augment=True)
    assert torch.equal(bn.running_mean, mean)
    assert torch.equal(torch.get_rng_state(), state)
    assert not net.training and net.fixed_path is None


def test_largest_path_is_the_widest_feasible_one() -> None:
    net = SuperNet("medpipe", 1, 2, stride_budget=2.0)
    path = largest_path(net)
    assert net.feasible(path)
    strides = net.path_strides(path)
    rows = [s for s in net.specs if s.searchable]
    normal = [s.candidates[i] for s, i in zip(rows, path, strict=True) if s.kind == "normal"]
    assert set(normal) == {"k3e6"}
    # no feasible stride pattern keeps more activations
    assert net.stride_cost(strides) >= net.stride_cost((1, 2, 2, 2, 2, 2, 1))
    assert strides.count(1) >= 2
    # and it keeps more than the path the search exports at the start
    worst, _ = measure_activations(net, (1, 8, 32, 32))
    start, _ = measure_activations(net, (1, 8, 32, 32), path=net.argmax_path())
    assert worst > start


def _peak_growth(script: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_estimate_is_within_2x_of_a_measured_training_step() -> None:
    r = _peak_growth("""
        import json, re, torch
        from pathlib import Path
        import torch.nn.functional as F
        from torch import nn
        from volnas.training.memory import estimate_step_bytes
        torch.set_num_threads(1)
        def rss(k):
            return int(re.search(k + r":\\s+(\\d+)", Path("/proc/self/status").read_text())[1]) * 1024
        net = nn.Sequential(nn.Conv3d(1, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
                            nn.Conv3d(16, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 2))
        net = net.to(memory_format=torch.channels_last_3d)
        x = torch.rand(4, 1, 8, 64, 64).contiguous(memory_format=torch.channels_last_3d)
        y = torch.tensor([0, 1, 0, 1])
        opt = torch.optim.Adam(net.parameters())
        def step(v):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(v), y).backward()
            opt.step()
        # RSS also counts the code pages of kernels touched for the first time: cold, this
        # step peaked at 75-91 MB here and 121 MB on CI; after a warm-up step on a tiny
        # input that loads them, 42-67 MB here
        step(x[:, :, :2, :8, :8].contiguous(memory_format=torch.channels_last_3d))
        opt.zero_grad(set_to_none=True)
        Path("/proc/self/clear_refs").write_text("5")
        base = rss("VmRSS")
        for _ in range(2):
            step(x)
        peak = rss("VmHWM") - base
        est = estimate_step_bytes(net, (1, 8, 64, 64), 4)
        print(json.dumps({"peak": peak, "est": est.total, "act": est.activations}))
    """)
    assert r["act"] > 0.4 * r["est"]  # a case where activations, not weights, dominate
    assert 0.5 < r["est"] / r["peak"] < 2.0, r


def test_estimate_is_within_2x_of_a_measured_search_step() -> None:
    """A medpipe search step with searched augmentation on its largest path (the bench's case)."""
    case = {"kind": "search", "space": "medpipe", "aug": "joint", "objective": "paper",
            "shape": [8, 32, 32], "batch": 2, "steps": 1, "breakdown": False}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_memory.py"),
                          "--case", json.dumps(case)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.5 < r["est_total"] / r["peak"] < 2.0, r


def test_check_fits_names_the_settings_that_fit() -> None:
    # 1 GB fixed, 1 GB per scan at 32x128x128, batch 8: 9 GB
    est = StepEstimate(params=GB // 4, state=3 * GB // 4, activations=6 * GB, workspace=2 * GB,
                       batch_size=8, input_shape=(1, 32, 128, 128))
    check_fits(est, 12 * GB, "this search")  # 0.9 * 12 - 1.5 = 9.3 GB: fits
    with pytest.raises(ValueError) as err:
        check_fits(est, 6 * GB, "this search", "or a machine with more memory", flags=SEARCH_FLAGS)
    msg = str(err.value)
    # budget 0.9 * 6 - 1.5 = 3.9 GB: 1 + 2 x 1 GB at batch 2; 1 + 2 GB at 64x64 (a quarter)
    assert "this search needs about 9.0 GB per step at batch 8, input 32x128x128" in msg
    assert "6.0 GB available" in msg
    assert "Settings that fit: --batch-size 2 or --search-size 64x64." in msg
    assert msg.endswith("or a machine with more memory")
    # budget 0.9 * 2.9 - 1.5 = 1.11 GB: batch 8 does not fit even at 8x32x32 (1.125 GB),
    # batch 1 does at 32x32x32 (1 + 1/16 GB)
    with pytest.raises(ValueError, match=r"Settings that fit: --batch-size 1 --search-size 32x32\."):
        check_fits(est, int(2.9 * GB), "this search", flags=SEARCH_FLAGS)


def test_check_run_memory_refuses_a_tiny_budget() -> None:
    torch.manual_seed(0)
    net = small_net()
    est = check_run_memory(net, (1, 8, 32, 32), 2, unrolled=False, augment=False,
                           device=torch.device("cpu"), available=lambda d: 64 * GB)
    assert est.batch_size == 2
    budget = int(est.total + est.per_sample * 2.5)  # batch 4 fits, 5 does not
    avail = (budget + int(1.5 * GB)) / 0.9
    with pytest.raises(ValueError, match=r"batch 32, .*Settings that fit: --batch-size 4\."):
        check_run_memory(net, (1, 8, 32, 32), 32, unrolled=False, augment=False,
                         device=torch.device("cpu"), available=lambda d: int(avail) + 1)


def test_available_bytes_reads_meminfo(tmp_path: Path) -> None:
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       32000000 kB\nMemAvailable:   1000 kB\n")
    assert available_bytes(info) == 1000 * 1024
    assert available_bytes(tmp_path / "missing") > 0  # os.sysconf fallback


def test_train_and_search_refuse_before_running_when_memory_is_short(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """The CLI refuses a run that would not fit, names what fits and leaves no folder;
    ``memory_check: false`` runs it anyway."""
    from typer.testing import CliRunner

    import volnas.training.memory as memory
    from volnas.cli.main import app
    from volnas.data.synth import synthesize

    res = synthesize(tmp_path / "d", scans=12, fmt="npz", classes=2, shape=(8, 16, 16), seed=0)
    data = str(next(res.out.glob("*.npz")))
    monkeypatch.setattr(memory, "available_bytes", lambda *a, **k: 3 * memory.GB)
    runner = CliRunner()
    common = ["--data", data, "--slices", "16", "--size", "64x64", "--batch-size", "64"]
    for cmd, extra in (("train", ["--model", "resnet3d_18", "--epochs", "1"]),
                       ("search", ["--space", "medpipe", "--epochs", "1", "--topk", "1",
                                   "--probe-epochs", "1", "--retrain-epochs", "1"])):
        out = tmp_path / cmd
        result = runner.invoke(app, [cmd, *common, *extra, "--out", str(out)])
        text = " ".join(result.output.split())
        assert result.exit_code == 2, text
        assert "GB per step at batch 64, input 16x64x64" in text and "3.0 GB available" in text
        assert "Settings that fit: --batch-size" in text and "memory_check: false" in text
        assert not out.exists()
    cfg = tmp_path / "anyway.yaml"
    cfg.write_text("memory_check: false\n")
    out = tmp_path / "anyway"
    result = runner.invoke(app, ["train", *common, "--batch-size", "4", "--model", "resnet3d_18",
                                 "--epochs", "1", "--config", str(cfg), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "metrics.json").is_file()
