"""The benchmark's smoke run: it writes its tables (no timing is asserted; speed is not a test)."""
import json

import pytest

import bench


def test_quick_stem_and_profile_parts(tmp_path):
    assert bench.main(["--quick", "--parts", "stem,profile", "--out", str(tmp_path)]) == 0
    stem = json.loads((tmp_path / "stem.json").read_text())
    assert len(stem) == 2 * 5  # batch sizes 1 and 8, five stems
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile[0]["op"].startswith("kernel()")
    assert "aten::mm" in [r["op"] for r in profile]  # the template mix, not an einsum
    assert set(json.loads((tmp_path / "bench.json").read_text())) == {"environment", "stem", "profile"}


def test_a_cut_bench_json_is_replaced_and_missing_pages_are_one_line(tmp_path, capsys):
    (tmp_path / "bench.json").write_text("")  # a run killed while writing it, before writes were atomic
    assert bench.main(["--quick", "--parts", "stem", "--out", str(tmp_path)]) == 0
    assert "bench.json could not be read" in capsys.readouterr().err
    assert set(json.loads((tmp_path / "bench.json").read_text())) == {"environment", "stem"}
    from utils.errors import UserError
    from utils.report import update_doc
    with pytest.raises(UserError, match="cannot read .*no-docs.* to update its complexity section"):
        update_doc("complexity", "a table", str(tmp_path / "no-docs" / "speed.md"))  # --update-docs without the pages


def test_quick_epoch_part_times_the_sweep_recipes_it_is_given(tmp_path):
    """One epoch of plain_zero and of each recipe asked for (by default dwg, every recipe of the
    Task 1 sweep and the full sandwich), with the cost of an epoch that validates once every
    --val-every epochs beside the cost with validation every epoch, and the recipe each row timed."""
    from experiments.results.runs import CANDIDATES
    assert bench.parse_args(["--parts", "epoch"]).epoch_models == ["plain_zero", *CANDIDATES]
    assert bench.main(["--quick", "--parts", "epoch", "--repeats", "1", "--data-root", "synthetic", "--threads", "1",
                       "--epoch-models", "dwg,sandwich-full", "--out", str(tmp_path)]) == 0
    rows = {r["row"]: r for r in json.loads((tmp_path / "epoch.json").read_text())}
    assert list(rows) == ["plain_zero", "dwg", "sandwich-full"]
    assert rows["plain_zero"]["val_every_epoch_ratio"] == pytest.approx(1.0)
    # the full sandwich validates every epoch, as the sweep trains it; the candidates every sixth
    full = rows["sandwich-full"]
    assert full["val_every_epoch_ratio"] == pytest.approx(full["epoch_ratio_to_plain"])
    assert full["sandwich_every"] == 1 and full["sandwich_fraction"] == 1
    assert full["flags"] == CANDIDATES["sandwich-full"]
    assert rows["dwg"]["val_every_epoch_ratio"] < rows["dwg"]["epoch_ratio_to_plain"]
    assert rows["dwg"]["single_prob"] == 0.5 and full["single_prob"] is None
    assert {r["data"] for r in rows.values()} == {"synthetic shapes"}  # the name the tables look up
    for r in rows.values():
        assert r["ratio_to_plain"] > 0 and r["val_every_epoch_ratio"] <= r["epoch_ratio_to_plain"] + 1e-9
        # the plain_zero it was divided by stays with it, should a later timing replace that row
        assert r["ratio_to_plain"] == pytest.approx(r["train_seconds"] / r["plain_train_seconds"])
        assert r["epoch_ratio_to_plain"] == pytest.approx(r["epoch_seconds"] / r["plain_epoch_seconds"])
        priced = bench.amortized((r["train_seconds"], r["epoch_seconds"]), r["val_every"]) / r["plain_epoch_seconds"]
        assert r["val_every_epoch_ratio"] == pytest.approx(priced)  # at the cadence the row records
    # another setting's measurement stays beside this one; the same setting's is replaced
    other = {**rows["dwg"], "img_size": rows["dwg"]["img_size"] + 1, "ratio_to_plain": 9.0}
    (tmp_path / "epoch.json").write_text(json.dumps([other, rows["dwg"]]))
    assert bench.other_settings(tmp_path / "epoch.json", list(rows.values())) == [other]
    # a recipe left out of a later timing keeps its row
    assert bench.other_settings(tmp_path / "epoch.json", [rows["plain_zero"]]) == [other, rows["dwg"]]


def test_quick_model_part_times_every_model_as_trained(tmp_path):
    """A training step of every model as the result tables train it, read from their own run lists
    (dwg's default sandwich, the lean and the full sandwich, resnet34, shallow distilled from it,
    rrdb, ...), and of every other registered model; peak memory on CUDA only."""
    import torch

    import models
    from bench import Step
    from losses import SandwichLoss
    assert bench.main(["--quick", "--parts", "model", "--threads", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "model.json").read_text())
    assert {r["model"] for r in rows} == set(models.list_models())
    full = "dwg --sandwich-fraction 1 --sandwich-every 1 --single-prob equal"
    assert {("dwg", "small"), (full, "small"), ("dwg --sandwich-every 6", "small"),
            ("plain_zero --train-channels R", "small"), ("resnet34", "-"), ("shallow --teacher resnet34", "-"),
            ("rrdb", "-")} <= {(r["step"], r["backbone"]) for r in rows}
    assert all(r["images_per_s"] > 0 and r["ratio_to_plain"] > 0 for r in rows)
    cuda = torch.cuda.is_available()
    assert all(isinstance(r["peak_memory_mb"], float) if cuda else r["peak_memory_mb"] == "n/a (CPU)" for r in rows)
    # dwg's step is the sandwich as train_dw.py builds it by default: one step in three, a quarter of the batch,
    # a single channel on half the steps between
    run, _ = bench.build_step(Step("train_dw.py", ("--model", "dwg")), "small", 32, 4, bench.parse_args(["--quick"]))
    assert isinstance(run.criterion, SandwichLoss) and (run.criterion.every, run.criterion.fraction) == (3, 0.25)
    assert run.criterion.single_prob == 0.5
