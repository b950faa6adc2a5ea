"""The sandwich's schedule and progress, sparse validation, and the recipes this version retired."""
import pandas as pd
import pytest
import torch

from losses import LabelLoss, SandwichLoss
from tests.conftest import run_script

TINY = ["--backbone", "small", "--data-root", "synthetic", "--limit", "48", "--img-size", "16", "--batch-size", "8",
        "--workers", "0"]


def _passes(crit, steps):
    """The channel names of every forward pass of ``steps`` calls of ``crit``."""
    seen = []
    for _ in range(steps):
        calls = []

        def forward(x, names, sync=True):
            calls.append(names)
            return torch.zeros(len(x), 4, requires_grad=True)
        for _ in crit(forward, torch.zeros(4, 3, 8, 8), tuple("RGB"), torch.zeros(4, dtype=torch.long)):
            pass
        seen.append(calls)
    return seen


def test_steps_between_sandwiches_draw_singles_at_the_chosen_rate():
    crit = SandwichLoss(LabelLoss(), 2, torch.Generator().manual_seed(0), every=3, single_prob=1.0)
    seen = _passes(crit, 9)
    assert [len(s) for s in seen[::3]] == [3] * 3  # a sandwich: the full set and two reduced sets
    assert seen[0][0] == tuple("RGB") and len(seen[0][1]) == 1
    assert all(len(s) == 1 and len(s[0]) == 1 for i, s in enumerate(seen) if i % 3)


def test_the_sandwich_resumes_its_schedule_from_its_state():
    """A criterion restored from another's ``state_dict`` makes the passes the first would have made next."""
    first = SandwichLoss(LabelLoss(), 2, torch.Generator().manual_seed(0), every=3)
    _passes(first, 4)
    second = SandwichLoss(LabelLoss(), 2, torch.Generator().manual_seed(0), every=3)
    second.load_state_dict(first.state_dict())
    assert second.state_dict() == {"steps": 4}
    assert [len(s) for s in _passes(second, 3)] == [1, 1, 3]  # steps 5 and 6 between sandwiches, 7 a sandwich
    with pytest.raises(ValueError, match="whole number"):
        second.load_state_dict({"steps": -1})


def test_validation_every_n_epochs_and_the_last(tmp_path):
    """--val-every 2 over 3 epochs validates epochs 2 and 3 only: the log leaves epoch 1 blank and
    best.pt is one of the validated epochs; the checkpoint keeps the sandwich's step count."""
    out = tmp_path / "run"
    r = run_script("train_dw.py", "--model", "dwg", *TINY, "--epochs", "3", "--val-every", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    log = pd.read_csv(out / "log.csv")
    assert log["val_acc"].isna().tolist() == [True, False, False]
    assert log["val_acc_R"].isna().tolist() == [True, False, False]
    assert "not validated" in r.stdout and "on 1 step in 3" in r.stdout
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] in (2, 3) and best["best_acc"] == pytest.approx(log["val_acc"].max(), abs=1e-4)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["criterion"] == {"steps": 3 * 6}  # 48 images, batch 8: 6 steps an epoch


def test_single_prob_without_subset_draws_is_refused(tmp_path):
    r = run_script("train_dw.py", "--model", "plain_zero", *TINY, "--single-prob", "0.5", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --single-prob 0.5 changes how subsets are drawn; this run trains with --channel-aug none (add "
        "--channel-aug subset or sandwich, or drop it)"]
    assert not (tmp_path / "r").exists()


def test_a_run_of_a_retired_recipe_is_refused_not_resumed_without_it(tmp_path):
    """The packed sandwich and the other rejected recipes left the code: their flags are unknown, and
    a checkpoint that trained with one on cannot be continued as if it had not."""
    r = run_script("train_dw.py", "--model", "dwg", *TINY, "--sandwich-packed", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--sandwich-packed" in r.stderr
    out = tmp_path / "run"
    r = run_script("train_dw.py", "--model", "dwg", *TINY, "--epochs", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["args"]["sandwich_packed"], ckpt["epoch"] = True, 1
    torch.save(ckpt, out / "last.pt")
    r = run_script("train_dw.py", "--resume", str(out))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {out / 'last.pt'} trained with --sandwich-packed True, a recipe this version no longer has; resume "
        "it with the version that trained it (docs/task1-design.md names the commit)"]
