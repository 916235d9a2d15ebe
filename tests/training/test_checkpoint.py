from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from volnas.core.files import load_tensors, save_tensors
from volnas.training.checkpoint import load_model_state, load_training_state, save_training_state


def test_training_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 5)).sum().backward()
        opt.step()
        sched.step()
    save_training_state(tmp_path, 3, model, opt, sched, {"note": "x"}, {"alpha": torch.ones(2, 3)})
    save_training_state(tmp_path, 4, model, opt, sched, {"note": "y"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0004.safetensors", "last.json"]

    model2 = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3, weight_decay=5e-4)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=10, eta_min=1e-5)
    epoch, extra, _ = load_training_state(tmp_path, model2, opt2, sched2)
    assert epoch == 4 and extra == {"note": "y"}
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert sched2.get_last_lr() == sched.get_last_lr()
    # the next optimiser step is identical after the round trip
    x = torch.randn(8, 5)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = save_training_state(tmp_path, 1, model, opt, None, {})
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_training_state(tmp_path, model, opt, None)


def test_pickle_file_is_refused_never_unpickled(tmp_path: Path) -> None:
    evil = tmp_path / "model.safetensors"
    torch.save({"weight": torch.zeros(2)}, evil)  # a zip/pickle renamed as safetensors
    with pytest.raises(ValueError, match="never unpickles"):
        load_tensors(evil)
    raw = tmp_path / "raw.safetensors"
    import pickle

    raw.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="pickle"):
        load_tensors(raw)


def test_corrupt_safetensors_and_mismatched_weights(tmp_path: Path) -> None:
    good = tmp_path / "w.safetensors"
    save_tensors(good, {"weight": torch.ones(2, 2), "bias": torch.zeros(2)})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ValueError, match="bad.safetensors: not a valid safetensors"):
        load_tensors(bad)
    with pytest.raises(ValueError, match="do not match the model"):
        load_model_state(nn.Linear(3, 3), good)
    m = nn.Linear(2, 2)
    load_model_state(m, good)
    assert torch.equal(m.weight, torch.ones(2, 2))
    assert not list(tmp_path.glob("*.tmp"))


def test_safetensors_whose_header_length_starts_with_0x80_loads(tmp_path: Path) -> None:
    # The first byte of a safetensors file is the low byte of its header length; 0x80
    # must not be mistaken for a pickle's PROTO opcode.
    path = tmp_path / "w.safetensors"
    for pad in range(300):
        save_tensors(path, {"w" + "x" * pad: torch.ones(1)})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert torch.equal(next(iter(load_tensors(path).values())), torch.ones(1))


def test_truncated_record_names_the_file_and_says_damaged(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_training_state(tmp_path, 1, model, opt, None, {})
    record = tmp_path / "last.json"
    text = record.read_text()
    record.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"last\.json: checkpoint record is damaged") as e:
        load_training_state(tmp_path, model, opt, None)
    assert str(tmp_path) in str(e.value)
    record.write_text('{"epoch": 1}')
    with pytest.raises(ValueError, match=r"last\.json: checkpoint record is damaged .*file"):
        load_training_state(tmp_path, model, opt, None)
