"""Tiny train + test runs through the entry scripts, as a user would run them."""
import json
import os

import pandas as pd
import pytest

import test_dw
import test_rrdb
import train_dw
import train_rrdb

TINY = ["--data-root", "synthetic", "--limit", "96", "--img-size", "24", "--batch-size", "16",
        "--workers", "0", "--epochs", "2"]


def test_task1_train_then_test(tmp_path, capsys):
    out = tmp_path / "dwg"
    assert train_dw.main(["--model", "dwg", "--backbone", "small", "--out", str(out), *TINY]) == 0
    assert {"best.pt", "last.pt", "log.csv", "config.json"} <= set(os.listdir(out))
    assert len((out / "log.csv").read_text().splitlines()) == 3
    capsys.readouterr()
    assert test_dw.main(["--checkpoint", str(out / "best.pt"), "--data-root", "synthetic", "--limit", "60",
                         "--img-sizes", "24,32", "--workers", "0", "--combos", "RGB,RG,B,BGR"]) == 0
    printed = capsys.readouterr().out
    assert "synthetic" in printed and "worst" in printed
    rows = json.loads((out / "eval-test" / "results.json").read_text())
    assert [(r["combo"], r["img_size"]) for r in rows] == [(c, s) for s in (24, 32) for c in ("RGB", "RG", "B", "BGR")]
    for r in rows:
        assert {"combo", "img_size", "accuracy", "top5", "precision", "recall", "f1", "f1_macro"} <= set(r)
        assert all(0 <= r[k] <= 1 for k in ("accuracy", "top5", "precision", "recall", "f1", "f1_macro"))
        assert r["top5"] >= r["accuracy"]
    assert (out / "eval-test" / "accuracy_by_combo.png").stat().st_size > 1000
    assert (out / "eval-test" / "results.md").read_text().count("\n") >= 9
    per_class = pd.read_csv(out / "eval-test" / "per_class.csv")
    assert list(per_class.columns) == ["img_size", "class", "name", "images", "RGB", "RG", "B", "BGR"]
    assert len(per_class) == 2 * 6 and per_class.groupby("img_size").images.sum().tolist() == [60, 60]
    for r in rows:  # per-class accuracies weighted by their images give back the overall accuracy
        part = per_class[per_class.img_size == r["img_size"]]
        assert (part[r["combo"]] * part.images).sum() / 60 == pytest.approx(r["accuracy"], abs=1e-3)  # CSV: 4 digits
    worst = min((r for r in rows if r["img_size"] == 24), key=lambda r: r["accuracy"])["combo"]
    assert {f"confusion_{c}.png" for c in ("RGB", worst)} <= set(os.listdir(out / "eval-test"))
    assert "classes that lose most" in printed
    # the confusions as a table, read where a figure of many classes cannot be
    mistakes = pd.read_csv(out / "eval-test" / "top_confusions.csv")
    assert list(mistakes.columns) == ["img_size", "combo", "true", "predicted", "count", "share"]
    assert (mistakes["true"] != mistakes["predicted"]).all() and mistakes["share"].between(0, 1).all()
    assert mistakes.groupby(["img_size", "combo"]).size().max() <= 5
    assert (out / "eval-test" / "top_confusions.md").exists() and "most frequent confusion" in printed


def test_plain_zero_weights_evaluated_as_plain_mean(tmp_path, capsys):
    """Same weights: RGB results agree; with a channel missing only the fill rule differs."""
    out = tmp_path / "pz"
    assert train_dw.main(["--model", "plain_zero", "--backbone", "small", "--out", str(out), *TINY[:-1], "1"]) == 0
    ev = ["--checkpoint", str(out), "--data-root", "synthetic", "--limit", "60", "--workers", "0",
          "--combos", "RGB,R"]
    assert test_dw.main(ev) == 0
    # the weights read as another model go beside the checkpoint's own evaluation, not over it
    assert test_dw.main([*ev, "--as-model", "plain_mean"]) == 0
    zero, mean = (json.loads((out / d / "results.json").read_text()) for d in ("eval-test", "eval-as-plain_mean-test"))
    assert mean[0]["model"] == "plain_mean" and zero[0]["model"] == "plain_zero"
    assert mean[0]["accuracy"] == zero[0]["accuracy"]
    assert (mean[1]["accuracy"], mean[1]["f1"]) != (zero[1]["accuracy"], zero[1]["f1"])
    with pytest.raises(SystemExit):
        test_dw.main([*ev, "--as-model", "dwg"])
    assert "weights do not fit model 'dwg'" in capsys.readouterr().err


def test_task1_complexity_report(tmp_path, capsys):
    out = tmp_path / "seed"
    assert train_dw.main(["--model", "seed_dwg", "--backbone", "small", "--out", str(out), *TINY[:-1], "1"]) == 0
    assert test_dw.main(["--checkpoint", str(out), "--data-root", "synthetic", "--limit", "30", "--workers", "0",
                         "--complexity", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "GMACs" in printed and "extra_params" in printed
    cost = json.loads((tmp_path / "ev" / "stem_cost.json").read_text())
    assert [c["channels"] for c in cost] == ["RGB", "RG", "R"]
    assert all(c["extra_macs"] > 0 for c in cost)  # per-image kernel generation costs extra


def test_task2_train_then_compare(tmp_path, capsys):
    for model in ("resnet34", "shallow"):
        assert train_rrdb.main(["--model", model, "--out", str(tmp_path / model), *TINY[:-1], "1"]) == 0
    assert train_rrdb.main(["--model", "shallow", "--teacher", str(tmp_path / "resnet34" / "best.pt"),
                            "--out", str(tmp_path / "kd"), *TINY[:-1], "1"]) == 0
    capsys.readouterr()
    assert test_rrdb.main(["--checkpoints", str(tmp_path / "shallow" / "best.pt"), str(tmp_path / "kd" / "best.pt"),
                           "--baseline",
                           str(tmp_path / "resnet34" / "best.pt"), "--data-root", "synthetic", "--limit", "60",
                           "--workers", "0", "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [r["model"] for r in rows] == ["resnet34", "shallow", "shallow+kd"]
    assert rows[1]["layers"] == 4
    assert rows[1]["ratio_to_baseline"] == pytest.approx(rows[1]["accuracy"] / rows[0]["accuracy"])
    assert "pass_90" in capsys.readouterr().out
    per_class = pd.read_csv(tmp_path / "cmp" / "per_class.csv")
    assert list(per_class.columns) == ["class", "name", "resnet34", "shallow", "shallow+kd"]
    assert (per_class.shape[0], per_class.resnet34.between(0, 1).all()) == (6, True)


@pytest.mark.skipif(not os.environ.get("DATA_ROOT"), reason="DATA_ROOT not set")
def test_on_a_slice_of_real_data(tmp_path):
    root = os.environ["DATA_ROOT"]
    args = ["--data-root", root, "--limit", "80", "--img-size", "32", "--batch-size", "16", "--workers", "0",
            "--epochs", "1", "--backbone", "small"]
    assert train_dw.main(["--out", str(tmp_path / "r"), *args]) == 0
    assert test_dw.main(["--checkpoint", str(tmp_path / "r"), "--data-root", root, "--limit", "40",
                         "--workers", "0"]) == 0
    rows = json.loads((tmp_path / "r" / "eval-test" / "results.json").read_text())
    assert len(rows) == 7 and rows[0]["images"] == 40


def test_training_learns_every_combination(tmp_path):
    """A few epochs on the synthetic shapes: RGB far above chance (1/6), every combination that can
    see the colour (one with R or B) well above it, and G above it: both colours have the same
    green, so G alone tells the shape only. A model that does not learn (a frozen optimizer, a
    detached loss) fails here."""
    out = tmp_path / "dwg"
    assert train_dw.main(["--model", "dwg", "--backbone", "small", "--data-root", "synthetic", "--limit", "384",
                          "--img-size", "24", "--batch-size", "32", "--workers", "0", "--epochs", "8", "--lr", "0.05",
                          "--out", str(out)]) == 0
    assert test_dw.main(["--checkpoint", str(out / "best.pt"), "--data-root", "synthetic", "--limit", "384",
                         "--workers", "0"]) == 0
    accuracy = {r["combo"]: r["accuracy"] for r in json.loads((out / "eval-test" / "results.json").read_text())}
    colour = [v for combo, v in accuracy.items() if combo != "G"]
    assert len(accuracy) == 7 and accuracy["RGB"] >= 0.6 and min(colour) >= 0.4 and accuracy["G"] > 0.18, accuracy


def test_the_checkpoint_kept_is_the_best_validation_epoch(tmp_path, monkeypatch):
    """Validation scores that rise, fall and rise less: best.pt is the epoch where log.csv's
    validation column peaks, not the last one nor the one with the best training accuracy."""
    import numpy as np
    import torch

    import train
    scores = iter([0.3, 0.7, 0.5])

    def evaluate(net, loader, ctx, combos, *args, **kwargs):
        right = int(100 * next(scores))
        targets, top = np.zeros(100, dtype=int), np.zeros((100, 1), dtype=int)
        top[right:] = 1
        return {c: (targets, top) for c in combos}
    monkeypatch.setattr(train, "evaluate", evaluate)
    out = tmp_path / "run"
    assert train_dw.main(["--model", "plain_zero", "--backbone", "small", "--out", str(out), *TINY[:-1], "3"]) == 0
    log = pd.read_csv(out / "log.csv")
    assert log.val_acc.tolist() == pytest.approx([0.3, 0.7, 0.5])
    best, last = (torch.load(out / f"{n}.pt", weights_only=False) for n in ("best", "last"))
    assert best["epoch"] == best["best_epoch"] == last["best_epoch"] == int(log.epoch[log.val_acc.idxmax()]) == 2
    assert last["epoch"] == 3


def test_evaluation_is_on_the_test_split(tmp_path):
    """val.txt and test.txt of different lengths: the table holds the test split's images."""
    from conftest import make_list_root
    root = make_list_root(tmp_path / "data", classes=3, per_class=6, size=24)
    test_lines = (root / "test.txt").read_text().splitlines()[:2]
    (root / "test.txt").write_text("\n".join(test_lines) + "\n")
    out = tmp_path / "run"
    assert train_dw.main(["--model", "plain_zero", "--backbone", "small", "--data-root", str(root), "--img-size", "16",
                          "--batch-size", "4", "--workers", "0", "--epochs", "1", "--out", str(out)]) == 0
    assert test_dw.main(["--checkpoint", str(out / "best.pt"), "--data-root", str(root), "--workers", "0",
                         "--combos", "RGB"]) == 0
    [row] = json.loads((out / "eval-test" / "results.json").read_text())
    assert row["images"] == 2 != len((root / "val.txt").read_text().splitlines())
