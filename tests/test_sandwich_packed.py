"""The packed sandwich (one forward, one backward), delayed subsets and sparse validation."""
import copy

import pandas as pd
import pytest
import torch
import torch.nn as nn

import models
from losses import LabelLoss, SandwichLoss, StoredTargets
from models.norm import ComboBatchNorm2d, ComboSelector
from tests.conftest import run_script


def _tiny_dwg(batchnorm=True):
    torch.manual_seed(0)
    model = models.create_model("dwg", 4, backbone="small", combo_bn=batchnorm)
    with torch.no_grad():  # give the zero-initialised hypernetwork weights so that every path matters
        model.stem.fc2.weight.normal_(0, 0.3)
    if not batchnorm:
        for module in list(model.body.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.BatchNorm2d):
                    setattr(module, name, nn.Identity())
    return model.train()


def _step(model, packed, fraction=0.5, subsets=2):
    """One sandwich step's gradients (and the values the loop would log), drawn from seed 1."""
    crit = SandwichLoss(LabelLoss(0.1), subsets, torch.Generator().manual_seed(1), fraction=fraction, packed=packed)
    torch.manual_seed(2)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    model.zero_grad()
    values = []
    for loss, _, *parts in crit(lambda x, names, sync=True: model(x, names).float(), x, tuple("RGB"), y):
        loss.backward()
        values += parts[0] if parts else [loss.item()]
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, values


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_packed_step_equals_the_sequential_sandwich(batchnorm, fraction):
    """Same images, same draws, the same teacher (the full set's detached output): the gradients of
    one packed forward equal those of the sequential passes, with or without BatchNorm per set,
    and so do the logged label and distillation losses and the running statistics."""
    sequential, packed = _tiny_dwg(batchnorm), _tiny_dwg(batchnorm)
    (g_seq, v_seq), (g_pack, v_pack) = _step(sequential, False, fraction), _step(packed, True, fraction)
    assert set(g_seq) == set(g_pack) and len(g_seq) > 10
    for name in g_seq:
        torch.testing.assert_close(g_pack[name], g_seq[name], atol=1e-5, rtol=1e-4, msg=name)
    assert v_pack[0] == pytest.approx(v_seq[0], abs=1e-5)
    assert v_pack[1] == pytest.approx(sum(v_seq[1:]), abs=1e-5)
    for (name, a), b in zip(sequential.named_buffers(), packed.buffers()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)


def test_grouped_batchnorm_equals_separate_calls_on_each_group():
    """A packed batch of three channel sets (two of them the same set): each group normalised with
    its own statistics and its own running row, as separate calls would."""
    torch.manual_seed(0)
    together, apart = (ComboBatchNorm2d(5, 7, affine=True, selector=ComboSelector(6)) for _ in range(2))
    with torch.no_grad():
        together.weight.normal_()
        together.bias.normal_()
    apart.load_state_dict(together.state_dict())
    groups = [(6, 4), (0, 3), (0, 2)]
    x = torch.randn(9, 5, 3, 3) * 3 + 1
    together.selector.groups = groups
    out = together(x)
    expected = []
    for part, (k, _) in zip(x.split([n for _, n in groups]), groups):
        apart.selector.index = k
        expected.append(apart(part))
    torch.testing.assert_close(out, torch.cat(expected))
    for name, value in apart.state_dict().items():
        torch.testing.assert_close(together.state_dict()[name], value, msg=name)
    assert together.num_batches_tracked.tolist() == [2, 0, 0, 0, 0, 0, 1]


def test_packed_forward_refuses_shared_batchnorm(tmp_path):
    model = models.create_model("plain_zero", 4, backbone="small")
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="per channel set"):
        model([x, x[:, :1]], [tuple("RGB"), ("R",)])
    r = run_script("train_dw.py", "--model", "dwg", "--no-combo-bn", "--sandwich-packed", "--backbone", "small",
                   "--data-root", "synthetic", "--img-size", "16", "--epochs", "1", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--sandwich-packed needs BatchNorm" in r.stderr
    assert not (tmp_path / "run").exists()


def _passes(crit, steps):
    """The channel names of every forward call of ``steps`` steps of a criterion."""
    seen = []
    for _ in range(steps):
        calls = []

        def forward(x, names, sync=True):
            calls.append(names)
            return torch.zeros(sum(map(len, x)) if isinstance(x, list) else len(x), 4, requires_grad=True)
        for _ in crit(forward, torch.zeros(4, 3, 8, 8), tuple("RGB"), torch.zeros(4, dtype=torch.long)):
            pass
        seen.append(calls)
    return seen


def test_delayed_sandwich_trains_the_full_set_alone_first():
    """With ``start`` steps of delay, the first steps make one full-set pass on the labels; then the
    sandwich (every second step here) starts counting from the end of the delay; a resumed
    criterion (``steps`` set) continues the same pattern."""
    crit = SandwichLoss(LabelLoss(), 2, torch.Generator().manual_seed(0), every=2, packed=True, start=3)
    seen = _passes(crit, 7)
    assert seen[:3] == [[tuple("RGB")]] * 3
    # packed: one call with the full set and two views of it
    assert [(len(s), len(s[0]), s[0][0]) for s in seen[3::2]] == [(1, 3, tuple("RGB"))] * 2
    assert all(len(s) == 1 and isinstance(s[0], tuple) and isinstance(s[0][0], str) for s in seen[4::2])
    resumed = SandwichLoss(LabelLoss(), 2, torch.Generator().manual_seed(0), every=2, packed=True, start=3)
    resumed.steps = 3
    assert len(_passes(resumed, 1)[0][0]) == 3


def test_steps_between_sandwiches_draw_singles_at_the_chosen_rate():
    crit = SandwichLoss(LabelLoss(), 2, torch.Generator().manual_seed(0), every=3)
    crit.single_prob = 1.0
    seen = _passes(crit, 9)
    assert [len(s) for s in seen[::3]] == [3] * 3  # the sandwiches stay as they were
    assert all(len(s) == 1 and len(s[0]) == 1 for i, s in enumerate(seen) if i % 3)


def test_stored_targets_teach_the_single_channel_steps_between_sandwiches():
    """dwg-singles-stored: the steps between sandwiches draw single channels at the chosen rate and
    each distils towards the prediction the last sandwich stored for its images, none without one."""
    crit = SandwichLoss(LabelLoss(), 2, torch.Generator().manual_seed(0), every=3,
                        stored=StoredTargets(8, 4))
    crit.single_prob = 1.0
    x, y = torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    full = torch.tensor([[2.0, 0.0, 0.0, 0.0]]).expand(4, 4)
    for step, batch in enumerate([[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7]]):
        crit.see_batch(torch.tensor(batch))
        calls = []

        def forward(x, names, sync=True):
            calls.append(names)
            return (full if len(names) == 3 else torch.zeros(len(x), 4)).clone().requires_grad_()
        out = list(crit(forward, x, tuple("RGB"), y))
        if step == 0:
            continue  # the sandwich stores the full set's prediction for images 0-3
        (loss, _, (label, distill)), = out
        assert len(calls) == 1 and len(calls[0]) == 1  # one single channel
        target = torch.softmax(full[0], 0)
        expected = -(target * torch.log_softmax(torch.zeros(4), 0)).sum().item() if step == 1 else 0.0
        assert distill == pytest.approx(expected, rel=1e-3) and loss.item() == pytest.approx(label + distill, rel=1e-5)


def test_packed_sandwich_refuses_a_smaller_side():
    with pytest.raises(ValueError, match="scale 1"):
        SandwichLoss(LabelLoss(), 2, packed=True, scale=0.5)


def test_validation_every_n_epochs_and_the_last(tmp_path):
    """--val-every 2 over 3 epochs validates epochs 2 and 3 only: the log leaves epoch 1 blank and
    best.pt is one of the validated epochs; the delayed packed sandwich starts after epoch 1."""
    out = tmp_path / "run"
    r = run_script("train_dw.py", "--model", "dwg", "--backbone", "small", "--data-root", "synthetic", "--limit", "48",
                   "--img-size", "16", "--batch-size", "8", "--epochs", "3", "--workers", "0", "--val-every", "2",
                   "--sandwich-packed", "--sandwich-every", "1", "--sandwich-delay", "0.34", "--out", str(out))
    assert r.returncode == 0, r.stderr
    log = pd.read_csv(out / "log.csv")
    assert log["val_acc"].isna().tolist() == [True, False, False]
    assert log["val_acc_R"].isna().tolist() == [True, False, False]
    assert "not validated" in r.stdout and "packed in one forward, after the first 0.34 of the steps" in r.stdout
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] in (2, 3) and best["best_acc"] == pytest.approx(log["val_acc"].max(), abs=1e-4)
    # 6 steps an epoch, 18 in all: a delay of round(0.34 x 18) = 6 steps is epoch 1, which distils nothing
    assert log["train_distill"].isna().tolist() == [True, False, False]
    # extended to 6 epochs, the delay stays the 6 steps it was, not a share of the new length
    r = run_script("train_dw.py", "--resume", str(out), "--epochs", "6")
    assert r.returncode == 0, r.stderr
    assert torch.load(out / "last.pt", weights_only=True)["sandwich_start"] == 6


def test_sandwich_options_without_the_sandwich_are_refused(tmp_path):
    r = run_script("train_dw.py", "--model", "plain_zero", "--backbone", "small", "--data-root", "synthetic",
                   "--limit", "48", "--sandwich-stored", "--sandwich-delay", "0.5", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --sandwich-stored, --sandwich-delay only change the sandwich; this run trains with "
        "--channel-aug none (add --channel-aug sandwich or drop them)"]
    assert not (tmp_path / "r").exists()


def test_packed_model_copy_is_independent_of_the_selector_state():
    """A packed forward leaves no group state behind: the next ordinary call normalises one set."""
    model = _tiny_dwg()
    x = torch.randn(4, 3, 8, 8)
    model([x, x[:2, :1]], [tuple("RGB"), ("R",)])
    assert model._combo_bns[0].selector.groups is None
    twin = copy.deepcopy(model).eval()
    torch.testing.assert_close(twin(x[:, :1], ("R",)), model.eval()(x[:, :1], ("R",)))


def test_ddp_packed_sandwich_all_reduces_once_a_step_and_equals_one_process(tmp_path):
    """Under torchrun (gloo, 2 processes) a packed sandwich step is one forward and one backward:
    one all-reduce round a step (two in all), and the weights of the sequential sandwich in one
    process."""
    from tests import ddp_sandwich_step as ddp
    out = tmp_path / "ddp.pt"
    r = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "tests/ddp_sandwich_step.py", str(out), "--packed")
    assert r.returncode == 0, r.stderr
    result = torch.load(out, weights_only=True)
    assert result["rounds"] == 2
    for name, p in ddp.one_process_weights().items():
        torch.testing.assert_close(result["state_dict"][name], p, atol=1e-5, rtol=1e-4, msg=name)


def test_task1_sweep_end_to_end_at_toy_size(tmp_path, capsys):
    """--part task1-sweep: plain_zero, the R expert and dwg at two budgets; plain_zero's
    validation decides the saturated budget, where the second seed and the full sandwich train;
    the table, the gaps (over the seeds both rows have), the figure and the docs section; the
    records (a run not trained twice, nor one made otherwise mixed in, every finished one shown)."""
    import json
    import shutil
    import statistics

    from experiments import results
    from tests.conftest import make_list_root
    root = make_list_root(tmp_path / "data", classes=3, per_class=6, size=24)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- task1-sweep:start -->\nSTALE\n<!-- task1-sweep:end -->\n"
                      "<!-- task1-sweep-headline:start -->\nSTALE\n<!-- task1-sweep-headline:end -->\n")
    args = ["--part", "task1-sweep", "--models", "plain_zero,plain_zero-Ronly,dwg,sandwich-full", "--budgets", "1,2",
            "--seeds", "0,1", "--img-size", "16", "--batch-size", "4", "--workers", "0", "--data-root", str(root),
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--figs", str(tmp_path / "figs"),
            "--update-docs", "--docs", str(readme), "--jobs", "2", "--limit", "9"]
    assert results.main(args) == 0
    out = capsys.readouterr().out
    assert "[1 of 6] 0 min elapsed\n" in out and "min to go" in out  # progress: 6 first-seed runs
    assert json.loads((tmp_path / "runs" / "task1" / "dwg-e1-s0" / "config.json").read_text())["limit"] == 9
    runs = sorted(p.name for p in (tmp_path / "runs" / "task1").iterdir())
    val = {e: pd.read_csv(tmp_path / "runs" / "task1" / f"plain_zero-e{e}-s0" / "log.csv")["val_acc"].max()
           for e in (1, 2)}
    claim = 1 if val[2] - val[1] < 0.01 else 2  # saturated at 1 epoch, else the longest budget
    expected = {f"{r}-e{e}-s0" for r in ("plain_zero", "plain_zero-Ronly", "dwg") for e in (1, 2)}
    expected |= {f"{r}-e{e}-s1" for r in ("plain_zero", "plain_zero-Ronly", "dwg") for e in {1, claim}}
    assert set(runs) == expected | {f"sandwich-full-e{claim}-s0"}
    table = json.loads((tmp_path / "results" / "task1_sweep.json").read_text())
    got = {(r["epochs"], r["row"]): r for r in table}
    assert got[(1, "plain_zero")]["seeds"] == 2 and got[(2, "dwg")]["seeds"] == (2 if claim == 2 else 1)
    assert got[(1, "single-channel expert")]["G"] is None
    gaps = json.loads((tmp_path / "results" / "task1_sweep_gaps.json").read_text())
    dwg1 = next(g for g in gaps if g["epochs"] == 1 and g["model"] == "dwg")
    assert dwg1["seeds"] == 2
    assert dwg1["RGB"] == pytest.approx(100 * (got[(1, "dwg")]["RGB"] - got[(1, "plain_zero")]["RGB"]), abs=1e-6)
    assert dwg1["R"] == pytest.approx(100 * (got[(1, "dwg")]["R"] - got[(1, "single-channel expert")]["R"]), abs=1e-6)
    # the spread is over the per-seed differences: seed s of dwg against seed s of plain_zero
    acc_of = {(r["run"], r["seed"]): r["accuracy"] for r in
              json.loads((tmp_path / "results" / "task1_sweep_runs.json").read_text())}
    diffs = [100 * (acc_of[("dwg-e1", s)]["RGB"] - acc_of[("plain_zero-e1", s)]["RGB"]) for s in (0, 1)]
    assert dwg1["RGB sd"] == pytest.approx(statistics.stdev(diffs), abs=1e-6)
    assert next(g for g in gaps if g["model"] == "sandwich-full")["RGB sd"] is None  # one seed: no spread
    assert (tmp_path / "figs" / "task1_sweep.png").exists()
    body, headline = readme.read_text().split("<!-- task1-sweep-headline:start -->")
    assert "STALE" not in body and "Task 1 budget sweep on data test split" in body and "Gap to the specialist" in body
    if claim == 1:  # saturated: the front page shows the gaps there
        assert "STALE" not in headline and "at 1 epochs" in headline and "docs/task1.md#the-budget-sweep" in headline
    else:  # no budget is known to saturate: the front page keeps what it showed
        assert "STALE" in headline
    # Every finished run is recorded: without its folders the tables are the same and nothing trains.
    records = json.loads((tmp_path / "results" / "task1_sweep_runs.json").read_text())
    assert {f"{r['run']}-s{r['seed']}" for r in records} == set(runs)
    published = (tmp_path / "results" / "task1_sweep.json").read_text()
    shutil.rmtree(tmp_path / "runs")
    # records written before a recipe flag existed lack it; they still count, at the value runs had before it
    older = [{**r, "made": {**r["made"], "recipe": {k: v for k, v in r["made"]["recipe"].items()
                                                    if k != "single_prob"}}} for r in records]
    (tmp_path / "results" / "task1_sweep_runs.json").write_text(json.dumps(older))
    assert results.main(args) == 0
    assert not (tmp_path / "runs" / "task1").exists()
    assert json.loads((tmp_path / "results" / "task1_sweep.json").read_text()) == json.loads(published)
    # A record made otherwise (another learning rate) is not this command's run: left in the file, never used.
    for r in records:
        if (r["run"], r["seed"]) == ("plain_zero-e1", 1):
            r["made"]["recipe"]["lr"] = 0.5
    (tmp_path / "results" / "task1_sweep_runs.json").write_text(json.dumps(records))
    assert results.main([*args, "--no-train"]) == 0
    table = json.loads((tmp_path / "results" / "task1_sweep.json").read_text())
    assert next(r for r in table if (r["epochs"], r["row"]) == (1, "plain_zero"))["seeds"] == 1
    assert len(json.loads((tmp_path / "results" / "task1_sweep_runs.json").read_text())) == len(records)
    # The tables show every finished run, whether the plan asks for it or not: the full sandwich at the
    # other budget too (a record made as this command would make it there).
    full = next(r for r in records if (r["run"], r["seed"]) == (f"sandwich-full-e{claim}", 0))
    other = 3 - claim
    records.append({**full, "run": f"sandwich-full-e{other}",
                    "made": {**full["made"], "recipe": {**full["made"]["recipe"], "epochs": other}}})
    (tmp_path / "results" / "task1_sweep_runs.json").write_text(json.dumps(records))
    assert results.main([*args, "--no-train"]) == 0
    table = json.loads((tmp_path / "results" / "task1_sweep.json").read_text())
    assert {r["epochs"] for r in table if r["row"] == "sandwich-full"} == {1, 2}
    # A record short of a combination its row is evaluated on is one line, not a dash in the table.
    for r in records:
        if (r["run"], r["seed"]) == ("dwg-e1", 0):
            del r["accuracy"]["BGR"]
    (tmp_path / "results" / "task1_sweep_runs.json").write_text(json.dumps(records))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        results.main([*args, "--no-train"])
    assert exc.value.code == 2 and "record of dwg-e1, seed 0 has no accuracy of BGR" in capsys.readouterr().err


def test_stored_targets_survive_a_kill_and_resume_exactly(tmp_path):
    """--sandwich-stored keeps each image's latest full-set prediction in the checkpoint: a run
    killed after epoch 1 and resumed ends with the uninterrupted run's weights, bit for bit (the
    steps of epoch 2 between sandwiches distil towards targets stored in epoch 1)."""
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.test_robustness import _wait_for_epochs
    run = ["--model", "dwg", "--backbone", "small", "--data-root", "synthetic", "--limit", "192", "--img-size", "24",
           "--batch-size", "16", "--workers", "0", "--seed", "3", "--deterministic", "--sandwich-stored",
           "--epochs", "2"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert run_script("train_dw.py", *run, "--out", str(ref)).returncode == 0
    proc = subprocess.Popen([sys.executable, "train_dw.py", *run, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_epochs(out, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = torch.load(out / "last.pt", weights_only=True)["stored_targets"]
    assert stored["probs"].shape == (192, 6) and 0 < stored["known"].sum() < 192
    r = run_script("train_dw.py", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    final, expected = (torch.load(p / "last.pt", weights_only=True) for p in (out, ref))
    assert final["epoch"] == expected["epoch"] == 2
    for k, v in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][k], v), k
    assert torch.equal(final["stored_targets"]["probs"], expected["stored_targets"]["probs"])


def test_task1_sweep_trains_every_seed_of_the_recipes_level_with_the_specialists():
    """The recipes the claims rest on (dwg-singles, dwg-lean) train every seed at the shortest and
    the saturated budget, as dwg does; the other recipes only the first seed."""
    import argparse

    from experiments.results.task1_sweep import sweep_plan
    args = argparse.Namespace(models="dwg,dwg-singles,dwg-lean,dwg-singles-affine", budgets=[48, 96, 192])
    later = {(row.name, seed) for row, seed in sweep_plan(args, [0, 1, 2], 96) if seed}
    assert later == {(f"{r}-e{e}", s) for r in ("dwg", "dwg-singles", "dwg-lean") for e in (48, 96) for s in (1, 2)}


def test_a_bench_epoch_counts_only_for_the_subset_draws_it_timed(tmp_path):
    """The sweep's dwg row keeps the earlier draws ('equal') while dwg's default moved to a single
    channel half the time: a bench epoch of today's dwg is neither that row's cost nor the other's
    equal-time budget the other way round; rows timed before the bench recorded the draws timed
    what their names spelled then."""
    import argparse
    import json

    from experiments.results.rows import trained_recipe
    from experiments.results.tables import timed_as
    from experiments.results.task1_sweep import bench_costs
    args = argparse.Namespace(bench=str(tmp_path), data_root="synthetic", img_size=32, batch_size=64)
    timed = {"data": "synthetic shapes", "img_size": 32, "batch": 64, "sandwich_fraction": 0.25,
             "sandwich_every": 3, "val_every_epoch_ratio": 1.1}
    rows = [{**timed, "model": "dwg", "single_prob": 0.5}, {**timed, "model": "dwg-singles", "single_prob": 0.5},
            {**timed, "model": "dwg-lean", "single_prob": 0.5}]
    untimed = {**rows[1], "val_every_epoch_ratio": None}  # a NaN ratio, as the bench writes it
    (tmp_path / "epoch.json").write_text(json.dumps([*rows, untimed]))
    assert bench_costs(args) == {"dwg-singles": 1.1}  # dwg-lean's sandwich is every sixth step, not third
    (tmp_path / "epoch.json").write_text(json.dumps([*rows, {**timed, "model": "dwg-equal", "single_prob": None}]))
    # recalibrating BatchNorm after training adds no epoch: the row costs what dwg's checkpoint cost
    assert bench_costs(args) == {"dwg": 1.1, "dwg-singles": 1.1, "dwg+recalibrated": 1.1}
    older = [{k: v for k, v in r.items() if k != "single_prob"} for r in rows[:2]]
    (tmp_path / "epoch.json").write_text(json.dumps(older))
    assert bench_costs(args) == {"dwg": 1.1, "dwg-singles": 1.1, "dwg+recalibrated": 1.1}
    assert not timed_as(older[0], trained_recipe("train_dw.py", []))  # dwg's default now: not what was timed
    assert timed_as(rows[0], trained_recipe("train_dw.py", []))


def test_the_front_page_shows_the_gaps_at_the_saturated_budget_with_their_cost(tmp_path, capsys):
    """Only the saturated budget's rows, each with the epoch cost the bench measured ('–' where it
    has not), signed even where no row has a spread, and the sweep's dwg row named as the earlier
    default it keeps; a sweep that saturates nowhere, or a tagged one not asked for, leaves the
    README as it was."""
    import argparse

    from experiments.results.parts import doc_sections
    from experiments.results.tables import on_front_page
    from experiments.results.task1_sweep import front_page, gap_markdown, gap_table, headline_markdown
    gaps = pd.DataFrame([{"epochs": e, "model": m, "RGB": g, "RGB sd": 0.5, "R": g, "R sd": None, "G": g,
                          "G sd": None, "B": -g, "B sd": None, "seeds": 3}
                         for e, g in ((48, -2.0), (96, 1.25)) for m in ("dwg", "dwg-singles", "dwg-lean")])
    text = headline_markdown(gaps, {"dwg-singles": 1.1227, "dwg": 1.16}, 96)
    lines = text.splitlines()
    assert len(lines) == 2 + 3 and "epoch cost" in lines[0] and "epochs" not in lines[0]
    singles, = [line for line in lines if "dwg-singles (dwg's default)" in line]
    assert "+1.2 ± 0.5" in singles and "-1.2" in singles and "1.12x" in singles and "-2.0" not in singles
    assert "dwg, earlier default (--single-prob equal)" in text and "1.16x" in text
    lean, = [line for line in lines if "dwg-lean" in line]
    assert "–" in lean
    one_seed = headline_markdown(gaps.assign(**{"RGB sd": None}, R=float("nan")), {}, 96)
    assert "| +1.2 " in one_seed and "| -1.2 " in one_seed and "1.2000" not in one_seed  # signed, not re-parsed
    assert "| –" in one_seed.splitlines()[2]  # a gap not measured reads as a dash
    # a sweep of the specialists alone has no gaps: a table with its header only, not a crash
    empty = gap_table(pd.DataFrame([{"epochs": 24, "row": "plain_zero", "combo": "RGB", "seed": 0, "accuracy": 0.8}]))
    header, rule = gap_markdown(empty).splitlines()
    assert "| model " in header and "| B " in header and rule.startswith("|--")
    assert len(headline_markdown(empty, {}, 24).splitlines()) == 2

    readme = tmp_path / "README.md"
    readme.write_text("<!-- task1-sweep-headline:start -->\nKEPT\n<!-- task1-sweep-headline:end -->\n")
    args = argparse.Namespace(update_docs=True, docs=str(readme), data_root="synthetic", backbone="small",
                              img_size=32, batch_size=64, jobs=2)
    front_page(args, gaps, {}, None, "plain_zero is not saturated")
    assert "KEPT" in readme.read_text() and "sweep table kept" in capsys.readouterr().out
    front_page(args, gaps, {}, 96, "plain_zero saturates at 96 epochs")
    assert "KEPT" not in readme.read_text() and "Task 1 budget sweep at 96 epochs" in readme.read_text()
    def sections(tag, asked=False):
        return doc_sections("task1-sweep", tag, on_front_page(argparse.Namespace(tag=tag, front_page=asked)))
    assert "task1-sweep-headline" in sections("")
    assert "task1-sweep-headline" not in sections("-64px")  # a side setting stays off it
    assert "task1-sweep-headline" in sections("-long", asked=True)
