"""python -m experiments.results --plan: the runs a command would train, from the same lists its
training goes through, with their state, the disk and the hours; nothing written."""
import json
import os

import pytest
import torch

import models
from experiments import results
from experiments.results import jobs, parts, plan
from tests.conftest import file_hashes
from utils.distributed import device_name

TOY = ["--seeds", "0", "--epochs", "1", "--img-size", "16", "--batch-size", "4", "--data-root", "synthetic",
       "--workers", "0"]


def test_the_plan_lists_exactly_the_runs_that_training_starts(tmp_path, monkeypatch, capsys):
    """--part all at toy size, each training script the driver starts recorded instead of run (and
    the tables left out): the plan lists exactly those runs, with the same command lines, the
    equal-time rows (the bench has timed dwg's epoch here) and the sweeps' later stages among them."""
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "epoch.json").write_text(json.dumps([{
        "model": "dwg", "data": "synthetic shapes", "img_size": 16, "batch": 4, "repeats": 1,
        "sandwich_fraction": 0.25, "sandwich_every": 3, "single_prob": 0.5, "ratio_to_plain": 1.6,
        "epoch_ratio_to_plain": 1.9}]))
    flags = ["--part", "all", *TOY, "--budgets", "1,3", "--out", str(tmp_path / "runs"), "--bench", str(bench),
             "--results", str(tmp_path / "tables"), "--figs", str(tmp_path / "figs")]
    before = file_hashes(tmp_path)
    assert results.main([*flags, "--plan"]) == 0
    assert file_hashes(tmp_path) == before and not (tmp_path / "runs").exists() and not (tmp_path / "tables").exists()
    printed = capsys.readouterr().out
    listed = plan.planned(results.parse_args(flags))

    started = []
    monkeypatch.setattr(jobs, "sh", lambda *cmd, threads=None: started.append(cmd))
    for part in parts.PARTS.values():
        monkeypatch.setattr(part, "tables", lambda args, seeds: None)
    assert results.main(flags) == 0
    assert set(started) == {(r.script, *r.common, *r.extra, "--out", r.out, "--overwrite") for _, r in listed}
    rows = {r.row for _, r in listed}
    assert {"dwg", "plain_zero-equal-time", "dwg-stored-e3", "sandwich-full-e3", "dwg-resnet18", "shallow_kd",
            "shallow-ema"} <= rows
    assert f"plan: {len(listed)} runs" in printed and f"): {len(listed)} new\n" in printed
    assert all(r.out in printed for _, r in listed)
    assert "* 3 epochs assumed: the budget where plain_zero saturates" in printed  # the sweep's second stage
    assert "time: no rate for the" in printed and "disk: " in printed


def fake_run(run, epoch, **changed):
    """A last.pt in ``run``'s folder as train.py leaves it after ``epoch`` epochs, trained with
    ``run``'s flags but ``changed`` (the plan reads only its counters and flags)."""
    from experiments.results.jobs import trained_recipe
    ckpt = {"model": run.model, "config": {}, "classes": ["a"], "state_dict": {"w": torch.zeros(1)},
            "args": {**trained_recipe(run.script, [*run.common, *run.extra]), **changed}, "epoch": epoch, "step": 0,
            "best_acc": 0.0, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": 0}}
    os.makedirs(run.out)
    torch.save(ckpt, os.path.join(run.out, "last.pt"))


def test_the_plan_says_where_each_run_stands_and_what_it_costs(tmp_path, capsys):
    """A finished run, one half trained and one trained with another budget: their states, the
    refusal the command would stop at, checkpoint sizes by the stated formula, and hours from the
    bench's rates only when they were measured on this machine (or --plan-rates names them)."""
    flags = ["--part", "task2-recipe", *TOY, "--epochs", "2", "--limit", "400", "--out", str(tmp_path / "runs"),
             "--bench", str(tmp_path / "bench")]
    plain, ema, mix = [run for _, run in plan.planned(results.parse_args(flags))]
    fake_run(plain, 2)
    fake_run(ema, 1)
    fake_run(mix, 2, epochs=5)
    elsewhere = [{"step": step, "backbone": "-", "img_size": 16, "amp": "off", "device": "another machine", "batch": 4,
                  "images_per_s": 0.1} for step in ("shallow", "shallow --ema 0.998")]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "model.json").write_text(json.dumps(elsewhere))
    before = file_hashes(tmp_path)
    assert results.main([*flags, "--plan"]) == 0
    out = capsys.readouterr().out
    assert "| finished " in out and "partly trained (1 of 2 epochs)" in out
    assert f"{mix.out}: the command would stop here: {mix.out}/last.pt was trained with --epochs 5, not 2" in out
    assert "3 runs (task2-recipe 3): 1 finished, 1 partly trained, 1 refused" in out
    assert "was measured on another machine, not on this machine" in out

    assert results.main([*flags, "--plan", "--plan-rates", str(tmp_path / "bench" / "model.json")]) == 0
    out = capsys.readouterr().out
    # one epoch left x 400 images / 0.1 images/s = 1.11 hours; the refused run trains nothing
    assert "about 1.1 hours for 1 run(s), one at a time: epochs left x 400 training images" in out
    assert file_hashes(tmp_path) == before

    weights = sum(t.numel() for t in models.create_model("shallow", 6).state_dict().values() if t.is_floating_point())
    params = sum(p.numel() for p in models.create_model("shallow", 6).parameters())
    assert plan.checkpoint_bytes(plain, 400, 6) == 4 * (weights + params)  # weights + SGD momentum
    assert plan.checkpoint_bytes(ema, 400, 6) == 4 * (2 * weights + params)  # and the EMA copy


@pytest.mark.parametrize("extra, message", [
    (["--plan-rates", "nowhere.json"], "--plan-rates goes with --plan"),
    (["--plan", "--plan-rates", "nowhere.json"], "--plan-rates nowhere.json: no such file"),
])
def test_plan_flags_are_checked(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        results.main(["--part", "task2-recipe", *TOY, "--out", str(tmp_path / "runs"), *extra])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_bench_rows_are_read_for_this_machine_only(tmp_path):
    """The bench's rows of this machine's device give rates; a file of the wrong shape is no table."""
    here = device_name("cuda" if torch.cuda.is_available() else "cpu")
    row = {"step": "shallow", "backbone": "-", "img_size": 16, "amp": "off", "device": here, "batch": 4,
           "images_per_s": 10.0}
    (tmp_path / "model.json").write_text(json.dumps([row, {**row, "device": "elsewhere", "images_per_s": 1.0}]))
    args = results.parse_args(["--bench", str(tmp_path), "--plan"])
    rates, source = plan.load_rates(args)
    assert rates == [row] and "measured on" in source
    (tmp_path / "bad.json").write_text(json.dumps([{"model": "dwg", "mode": "train step"}]))
    with pytest.raises(results.UserError, match="no training-step rates of python -m bench --parts model"):
        plan.load_rates(results.parse_args(["--plan", "--plan-rates", str(tmp_path / "bad.json")]))
