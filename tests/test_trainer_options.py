"""The trainer's recipe options: optimizers and schedules from torch, per-task command lines,
model options from the command line, and a weights-only export."""
import argparse
import json

import pytest
import torch

import export
import test_rrdb
import train_rrdb
from optim import build_optimizer

TINY = ["--data-root", "synthetic", "--limit", "48", "--img-size", "16", "--batch-size", "16", "--workers", "0",
        "--epochs", "1"]


def _curve(sched, warmup, steps=20, opt="sgd"):
    args = argparse.Namespace(opt=opt, lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=4, warmup_epochs=warmup,
                              sched=sched)
    optimizer, scheduler = build_optimizer(torch.nn.Linear(3, 2), args, steps // 4)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return optimizer, lrs


@pytest.mark.parametrize("sched", ["cosine", "step", "constant"])
def test_each_schedule_gives_the_curve_its_help_states(sched):
    _, lrs = _curve(sched, warmup=1.0)  # 20 steps, the first 5 a warm-up
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # (i + 1) / warm-up of the peak
    after = lrs[5:]
    expected = {"cosine": [0.05 * (1 + torch.cos(torch.tensor(torch.pi * i / 15))).item() for i in range(15)],
                "step": [0.1] * 5 + [0.01] * 5 + [0.001] * 5,  # x0.1 at 1/2 and 3/4 of the 20 steps
                "constant": [0.1] * 15}[sched]
    assert after == pytest.approx(expected, abs=1e-6)
    _, cold = _curve(sched, warmup=0.0)
    assert cold[0] == pytest.approx(0.1)


def test_adamw_and_the_schedule_resumed_at_a_step():
    optimizer, lrs = _curve("cosine", 1.0, opt="adamw")
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 5e-4
    args = argparse.Namespace(opt="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=4, warmup_epochs=1.0,
                              sched="cosine")
    for done in (0, 3, 7, 19):  # rebuilt and moved on: the LR of an uninterrupted run at that step
        optimizer, scheduler = build_optimizer(torch.nn.Linear(3, 2), args, 5, done)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(_curve("cosine", 1.0)[1][done])
        assert scheduler.last_epoch == done


def test_task2_command_line_has_only_task2_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_rrdb.main(["--help"])
    text = capsys.readouterr().out
    assert "--sandwich-every" not in text and "--combo-bn" not in text and "--train-channels" not in text
    listed = text.split("one of:")[1].split("--model-opt")[0]
    assert "shallow" in listed and "dwg" not in listed
    with pytest.raises(SystemExit) as exc:
        train_rrdb.main([*TINY, "--combo-bn", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "unrecognized arguments: --combo-bn" in err[0]
    assert not (tmp_path / "x").exists()


def test_model_options_reach_the_factory(tmp_path, capsys):
    small, default = tmp_path / "small", tmp_path / "default"
    assert train_rrdb.main(["--model", "shallow", *TINY, "--model-opt", "widths=8,16,32", "--opt", "adamw",
                            "--sched", "constant", "--out", str(small)]) == 0
    assert train_rrdb.main(["--model", "shallow", *TINY, "--out", str(default)]) == 0
    ckpt = torch.load(small / "best.pt", weights_only=True)
    assert tuple(ckpt["config"]["widths"]) == (8, 16, 32)
    params = {p: sum(v.numel() for v in torch.load(p / "best.pt", weights_only=True)["state_dict"].values())
              for p in (small, default)}
    assert params[small] < params[default] / 10
    config = json.loads((small / "config.json").read_text())
    assert (config["opt"], config["lr"], config["sched"]) == ("adamw", 0.001, "constant")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_rrdb.main(["--model", "shallow", *TINY, "--model-opt", "depth=3", "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "model 'shallow' has no option 'depth'" in err[0]
    with pytest.raises(SystemExit):
        train_rrdb.main(["--model-opt", "widths"])
    assert "expected KEY=VALUE, got 'widths'" in capsys.readouterr().err
    # a weights-only export: a fraction of best.pt, and every script takes it
    assert export.main(["--checkpoint", str(small), "--formats", "weights,torch", "--out", str(tmp_path / "w")]) == 0
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["shallow_RGB.json", "shallow_RGB.pt2",
                                                                   "shallow_weights.pt"]
    weights = tmp_path / "w" / "shallow_weights.pt"
    assert weights.stat().st_size < (small / "best.pt").stat().st_size
    assert test_rrdb.main(["--checkpoints", str(weights), str(small / "best.pt"), "--limit", "12", "--workers", "0",
                           "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert rows[0]["accuracy"] == rows[1]["accuracy"] and rows[0]["params"] == rows[1]["params"]
    with pytest.raises(SystemExit) as exc:
        train_rrdb.main(["--resume", str(weights)])
    assert exc.value.code == 2 and "holds weights only and cannot be resumed" in capsys.readouterr().err


class _Linear(torch.nn.Module):
    """A model without BatchNorm that takes the loop's channel names."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 4 * 4, 3)

    def forward(self, x, names=None):
        return self.fc(x.flatten(1))


def test_ema_is_the_hand_computed_average_of_the_weights():
    from engine import EMA, Run, State, train_one_epoch
    from losses import LabelLoss
    batches = [(torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8), torch.randint(0, 3, (4,))) for _ in range(3)]

    def trainer(net):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
        return optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    net, expected = _Linear(), None
    optimizer, scheduler = trainer(net)
    for batch in batches:  # one step at a time, the average by hand: the first copies, then 0.5 / 0.5
        train_one_epoch(Run(net, LabelLoss()), State(optimizer, scheduler), [batch], 1)
        w = net.fc.weight.detach().clone()
        expected = w if expected is None else 0.5 * expected + 0.5 * w
    again = _Linear()
    ema = EMA(again, 0.5)
    optimizer, scheduler = trainer(again)
    train_one_epoch(Run(again, LabelLoss()), State(optimizer, scheduler, ema=ema), batches, 1)
    torch.testing.assert_close(again.fc.weight, net.fc.weight)
    torch.testing.assert_close(ema.module.fc.weight, expected)
    assert int(ema.averaged.n_averaged) == 3


def test_ema_survives_resume_bit_exactly_and_scripts_take_it(tmp_path, capsys):
    import train_dw
    run = ["--model", "dwg", "--backbone", "small", "--data-root", "synthetic", "--limit", "64", "--img-size", "16",
           "--batch-size", "16", "--workers", "0", "--ema", "0.9", "--deterministic"]
    assert train_dw.main([*run, "--epochs", "2", "--out", str(tmp_path / "whole")]) == 0
    assert train_dw.main([*run, "--epochs", "1", "--out", str(tmp_path / "cut")]) == 0
    assert train_dw.main(["--resume", str(tmp_path / "cut"), "--epochs", "2"]) == 0
    whole, cut = (torch.load(tmp_path / p / "last.pt", weights_only=True) for p in ("whole", "cut"))
    assert whole["ema"]["n_averaged"] == cut["ema"]["n_averaged"] == 8
    for k, v in whole["ema"]["state_dict"].items():
        assert torch.equal(v, cut["ema"]["state_dict"][k]), k
    assert not all(torch.equal(v, whole["state_dict"][k]) for k, v in whole["ema"]["state_dict"].items()
                   if v.is_floating_point())
    from models.loading import model_from_checkpoint
    whole["path"] = str(tmp_path / "whole" / "last.pt")
    for ema, key in ((True, "ema"), (False, None)):
        state = model_from_checkpoint(whole, ema).state_dict()
        source = whole["ema"]["state_dict"] if key else whole["state_dict"]
        assert all(torch.equal(state[k], source[k]) for k in source)
    # An export of the weights holds their average alone: --no-ema on it is refused, not answered
    # with the average; an export made with --no-ema holds the raw weights and takes it.
    import numpy as np
    from PIL import Image

    import export
    import predict
    image = str(tmp_path / "photo.png")
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(image)
    for flags, folder in (([], "avg"), (["--no-ema"], "raw")):
        assert export.main(["--checkpoint", str(tmp_path / "whole"), "--formats", "weights", *flags,
                            "--out", str(tmp_path / folder)]) == 0
    capsys.readouterr()
    averaged, raw = (str(tmp_path / f / "dwg_weights.pt") for f in ("avg", "raw"))
    assert predict.main(["--checkpoint", averaged, image]) == 0
    assert predict.main(["--checkpoint", raw, "--no-ema", image]) == 0
    with pytest.raises(SystemExit) as exc:
        predict.main(["--checkpoint", averaged, "--no-ema", image])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "holds only the moving average of the weights" in err[0]


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixed_targets_sum_to_one_and_the_sandwich_learns_them(mixup, cutmix):
    import torch.nn.functional as F

    from data.datasets import normalize
    from engine import Run, State, train_one_epoch
    from losses import LabelLoss, SandwichLoss, soft_cross_entropy
    from tests.test_task1_training import _tiny_dwg
    from train import batch_mixing
    mix = batch_mixing(argparse.Namespace(mixup=mixup, cutmix=cutmix), 4)
    u8, y = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 4, (8,))
    torch.manual_seed(3)
    x, soft = mix(normalize(u8), y)
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8)) and (soft >= 0).all()
    # the loop's step against the same step written out: the full set on the mixed targets, the
    # reduced sets on the full set's output
    reference = _tiny_dwg().train()
    draws = SandwichLoss(LabelLoss(0.1), 2, torch.Generator().manual_seed(5)).draw("RGB")
    full = reference(x, tuple("RGB"))
    target = F.softmax(full.detach(), 1)
    loss = F.cross_entropy(full, soft, label_smoothing=0.1) + sum(
        soft_cross_entropy(reference(x[:, k], tuple("RGB"[i] for i in k)), target) for k in draws)
    loss.backward()
    expected = {n: p.detach() - p.grad for n, p in reference.named_parameters() if p.grad is not None}
    model = _tiny_dwg().train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    torch.manual_seed(3)  # the same mixing draw inside the loop
    crit = SandwichLoss(LabelLoss(0.1), 2, torch.Generator().manual_seed(5), every=1)
    train_one_epoch(Run(model, crit), State(opt, sched), [(u8, y)], 1, mix=mix)
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.detach(), expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_run_with_mixing_and_an_average_trains_and_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_rrdb.main(["--model", "shallow", *TINY, "--mixup", "0.2", "--cutmix", "1.0", "--ema", "0.99",
                            "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MixUp 0.2; CutMix 1; EMA of the weights, decay 0.99" in printed
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["ema"]["n_averaged"] == 3  # 48 images, batches of 16
    assert test_rrdb.main(["--checkpoints", str(out), "--limit", "12", "--workers", "0"]) == 0
    assert test_rrdb.main(["--checkpoints", str(out), "--limit", "12", "--workers", "0", "--no-ema",
                           "--out", str(tmp_path / "raw")]) == 0


def test_accumulated_micro_batches_make_the_step_of_one_large_batch():
    from engine import Run, State, train_one_epoch
    from losses import LabelLoss
    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 3, (8,))

    def run(batches, accum, micro_batches=None):
        net = _Linear()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        run = Run(net, LabelLoss(), args=argparse.Namespace(epochs=1, accum_steps=accum),
                  steps_per_epoch=micro_batches // accum if micro_batches else 0)
        stats = train_one_epoch(run, State(optimizer, scheduler), batches, 1)
        return net, scheduler, stats
    whole, sched_whole, _ = run([(images, labels)], 1)
    halves = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    # two micro-batches of four, a third that cannot fill a step left out
    accumulated, sched_acc, stats = run([*halves, (images[:4], labels[:4])], 2, micro_batches=2)
    torch.testing.assert_close(accumulated.fc.weight, whole.fc.weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(accumulated.fc.bias, whole.fc.bias, atol=1e-5, rtol=0)
    assert (sched_whole.last_epoch, sched_acc.last_epoch, stats["step"]) == (1, 1, 2)
    # one micro-batch alone is not a step: nothing moves
    net, sched, _ = run(halves[:1], 2)
    assert sched.last_epoch == 0 and torch.equal(net.fc.weight, _Linear().fc.weight)


def test_a_run_with_accumulation_counts_its_schedule_in_optimizer_steps(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_rrdb.main(["--model", "shallow", *TINY[:-1], "2", "--batch-size", "8", "--accum-steps", "2",
                            "--out", str(out)]) == 0
    assert "2 micro-batches of 8 a step" in capsys.readouterr().out
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["scheduler"]["last_epoch"] == 2 * 3  # 48 images: 3 steps of 2 x 8 an epoch


def test_dwg_draws_a_single_channel_half_the_time_unless_told_equal(tmp_path, capsys):
    """The budget sweep's choice is dwg's default; 'equal' keeps the earlier draws, a resumed run
    keeps its own, and a run trained with the other is never reused for a table."""
    import argparse

    import train_dw
    from experiments.results.jobs import status
    from experiments.results.runs import Job
    from flags import recipe_of as trained_recipe
    from utils.errors import UserError
    assert trained_recipe("train_dw.py", [])["single_prob"] == 0.5
    assert trained_recipe("train_dw.py", ["--channel-aug", "subset"])["single_prob"] == 0.5
    for flags in (["--single-prob", "equal"], ["--model", "plain_zero"], ["--channel-aug", "shuffle"]):
        assert trained_recipe("train_dw.py", flags)["single_prob"] is None, flags
    tiny = [*TINY, "--backbone", "small", "--val-combos", "RGB,R"]
    assert train_dw.main([*tiny, "--out", str(tmp_path / "new")]) == 0
    assert train_dw.main([*tiny, "--single-prob", "equal", "--out", str(tmp_path / "equal")]) == 0
    assert train_dw.main([*tiny, "--channel-aug", "shuffle", "--out", str(tmp_path / "shuffle")]) == 0
    assert json.loads((tmp_path / "new" / "config.json").read_text())["single_prob"] == 0.5
    assert "a single channel p=0.5" in capsys.readouterr().out
    assert train_dw.main(["--resume", str(tmp_path / "equal" / "last.pt"), "--epochs", "2"]) == 0
    assert json.loads((tmp_path / "equal" / "config.json").read_text())["single_prob"] is None
    data = argparse.Namespace(data_root=tiny[tiny.index("--data-root") + 1])

    def check_same_recipe(flags):
        return status(data, Job("part", "row", 0, 2, "train_dw.py", tuple(flags), str(tmp_path / "equal")))
    with pytest.raises(UserError, match="equal/last.pt was trained with --single-prob equal, not 0.5"):
        check_same_recipe([*tiny, "--epochs", "2"])
    assert check_same_recipe([*tiny, "--epochs", "2", "--single-prob", "equal"]) == "finished"
