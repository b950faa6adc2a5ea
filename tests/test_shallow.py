import json
import os
import re

import pytest
import torch

import models
from conftest import make_list_root
from experiments import results
from experiments.results.rows import RECIPES
from models.shallow import RepConv
from utils.complexity import complexity_row, count_weighted_layers

TASK2 = ["resnet34", "rrdb", "rrdb_rnn", "repshallow", "shallow"]
EXPECTED_LAYERS = {"resnet34": 37, "rrdb": 8, "rrdb_rnn": 11, "repshallow": 4, "shallow": 4}


def _randomise_bn(model):
    """Give every BatchNorm non-trivial statistics so that folding it is really exercised."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", TASK2)
@pytest.mark.parametrize("size", [32, 64, 97])
def test_shapes_and_layer_counts(name, size):
    model = models.inference_form(models.create_model(name, 10))
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, size, size)).shape == (2, 10)
    assert count_weighted_layers(model, size) == EXPECTED_LAYERS[name]


def test_shallow_is_within_the_limit_and_resnet34_is_not_pretrained():
    assert count_weighted_layers(models.inference_form(models.create_model("shallow", 50)), 224) <= 4
    a, b = models.create_model("resnet34", 5), models.create_model("resnet34", 5)
    assert not torch.equal(a.net.conv1.weight, b.net.conv1.weight)  # random init, no fixed weights


@pytest.mark.parametrize("cin, cout, k, stride", [(3, 8, 5, 2), (8, 8, 3, 1), (8, 16, 3, 1)])
def test_repconv_fold_is_exact(cin, cout, k, stride):
    torch.manual_seed(0)
    block = RepConv(cin, cout, k, stride)
    _randomise_bn(block)
    block.eval()
    x = torch.randn(2, cin, 15, 15)
    with torch.no_grad():
        ref = block(x)
        block.deploy()
        out = block(x)
    assert not hasattr(block, "conv_k")
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_deployed_shallow_model_matches_training_form():
    torch.manual_seed(0)
    model = models.create_model("shallow", 10)
    _randomise_bn(model)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        trained_layers = count_weighted_layers(model, 64)
        deployed = models.inference_form(model)
        out = deployed(x)
    assert trained_layers > 4 == count_weighted_layers(deployed, 64)
    assert count_weighted_layers(model, 64) == trained_layers  # the model itself is left as it was
    assert (out - ref).abs().max() < 1e-4


def test_complexity_row_columns():
    row = complexity_row(models.create_model("rrdb", 50))
    assert set(row) >= {"params", "macs", "flops", "fwd_bwd_mb", "params_mb", "layers"}
    assert row["flops"] == 2 * row["macs"] > 0
    assert 0.1e6 < row["params"] < 0.2e6  # the original reported 0.17M


def test_deploy_twice_is_a_no_op_and_a_model_can_be_built_deployed():
    torch.manual_seed(0)
    model = models.create_model("shallow", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        deployed = models.inference_form(model)
        once = deployed(x)
        torch.testing.assert_close(models.inference_form(deployed)(x), once)
        model = deployed
        built = models.create_model("shallow", 10, deploy=True).eval()
        assert built.state_dict().keys() == model.state_dict().keys()
        built.load_state_dict(model.state_dict())
        torch.testing.assert_close(built(x), once)
    assert count_weighted_layers(built, 32) == 4


def test_deployed_checkpoint_from_test_rrdb_loads_back(tmp_path):
    import test_rrdb
    import train_rrdb
    from models.loading import load_model
    tiny = ["--data-root", "synthetic", "--limit", "32", "--img-size", "16", "--batch-size", "16",
            "--workers", "0", "--epochs", "1"]
    assert train_rrdb.main(["--model", "shallow", "--out", str(tmp_path / "s"), *tiny]) == 0
    assert train_rrdb.main(["--model", "resnet34", "--out", str(tmp_path / "r"), *tiny]) == 0
    assert test_rrdb.main(["--checkpoints", str(tmp_path / "s" / "best.pt"), str(tmp_path / "s" / "last.pt"),
                           "--baseline",
                           str(tmp_path / "r" / "best.pt"), "--data-root", "synthetic", "--limit", "16",
                           "--workers", "0", "--out", str(tmp_path / "cmp"),
                           "--save-deployed", str(tmp_path / "deployed")]) == 0
    # two checkpoints of one model: two files, the first not overwritten by the second
    assert sorted(os.listdir(tmp_path / "deployed")) == ["resnet34.pt", "shallow-2.pt", "shallow.pt"]
    from data import describe_root
    classes = describe_root("synthetic").classes
    ckpt, model = load_model(str(tmp_path / "deployed" / "shallow.pt"), classes)
    assert ckpt["deployed"] and count_weighted_layers(model, 16) == 4
    _, trained = load_model(str(tmp_path / "s" / "best.pt"), classes)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), models.inference_form(trained)(x), atol=1e-4, rtol=1e-4)


def test_deep_trained_shallow_merges_exactly_once_its_activations_are_gone():
    torch.manual_seed(0)
    model = models.create_model("shallow_deep", 10)
    _randomise_bn(model)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    model.set_progress(0.2)  # slope 0.4 with deep_train 0.5: still non-linear
    with pytest.raises(ValueError, match="deep training has not finished"):
        models.inference_form(model)
    model.set_progress(0.5)
    with torch.no_grad():
        ref = model(x)
        trained_layers = count_weighted_layers(model, 64)
        model = models.inference_form(model)
        model.deploy()  # idempotent
        out = model(x)
    assert trained_layers == 3 * 3 + 1 and count_weighted_layers(model, 64) == 4
    assert (out - ref).abs().max() < 1e-4
    built = models.create_model("shallow_deep", 10, deploy=True)
    built.load_state_dict(model.state_dict())  # the merged form loads into one built deployed


def test_the_training_loop_anneals_the_activation(tmp_path):
    import train_rrdb
    from utils.checkpoint import load_checkpoint
    out = tmp_path / "deep"
    assert train_rrdb.main(["--model", "shallow_deep", "--data-root", "synthetic", "--limit", "32",
                            "--img-size", "32", "--batch-size", "16", "--workers", "0", "--epochs", "4",
                            "--out", str(out)]) == 0
    slopes = {k: float(v) for k, v in load_checkpoint(str(out / "last.pt"))["state_dict"].items()
              if k.endswith("slope")}
    assert len(slopes) == 3 and set(slopes.values()) == {1.0}  # gone after half of the 8 steps


def test_task2_sweep_end_to_end_at_toy_size(tmp_path):
    """Two budgets on a toy list: every model trained and evaluated per budget, the distilled row
    at the saturated budget (else the longest), the table (with minutes) written and pasted into
    the README given."""
    root = make_list_root(tmp_path / "data", classes=3, per_class=6, size=24)
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- task2-sweep:start -->\nSTALE TABLE\n<!-- task2-sweep:end -->\n"
                      "<!-- task2-headline:start -->\n<!-- task2-headline:end -->\nafter\n")
    out = {k: str(tmp_path / k) for k in ("runs", "results", "figs")}
    args = ["--part", "task2-sweep", "--budgets", "1,2", "--img-size", "16", "--batch-size", "4", "--workers", "0",
            "--jobs", "2",
            "--data-root", str(root), "--out", out["runs"], "--results", out["results"], "--figs", out["figs"],
            "--update-docs", "--docs", str(readme)]
    assert results.main(args) == 0
    rows = json.loads((tmp_path / "results" / "task2_sweep.json").read_text())
    assert [r["epochs"] for r in rows] == [1, 2]
    assert {"resnet34", "shallow", "shallow_deep", "shallow / resnet34", "resnet34 min"} <= set(rows[0])
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "STALE" not in text and "epochs |" in text
    assert (tmp_path / "figs" / "task2_sweep.png").exists()
    # the front page's rows, pasted again from the written table alone (no runs needed)
    headline = text.split("<!-- task2-headline:start -->")[1].split("<!-- task2-headline:end -->")[0]
    assert headline.count("\n|") == 4 and "shallow / resnet34" in headline  # header, rule, two budgets
    page = tmp_path / "front.md"
    page.write_text("<!-- task2-headline:start -->\n<!-- task2-headline:end -->\n")
    assert results.main(["--part", "task2-headline", "--results", out["results"], "--update-docs",
                         "--docs", str(page)]) == 0
    assert page.read_text() == f"<!-- task2-headline:start -->{headline}<!-- task2-headline:end -->\n"
    # distilled at the saturated budget, or from the longest budget's ResNet34 when none saturates
    kd_epochs = int(re.search(r"shallow\+kd is distilled from the (\d+)-epoch ResNet34", text).group(1))
    assert kd_epochs == (1 if "ResNet34 saturates at 1 epochs" in text else 2)
    assert [r["epochs"] for r in rows if r["shallow+kd"] is not None] == [kd_epochs]
    # saturation (and so the teacher) is judged on validation: each ResNet34 checkpoint's val accuracy
    for r in rows:
        log = (tmp_path / "runs" / "task2-sweep" / f"resnet34-e{r['epochs']}-s0" / "log.csv").read_text()
        assert r["resnet34 val"] == max(float(line.split(",")[4]) for line in log.splitlines()[1:])
    # --no-train: a budget whose ResNet34 has finished is reported, its unfinished shallow runs as
    # blanks; a budget without a finished ResNet34 is left out; nothing is trained
    import train_rrdb
    sweep = tmp_path / "runs" / "task2-sweep"
    assert train_rrdb.main(["--model", "resnet34", "--epochs", "4", "--img-size", "16", "--batch-size", "4",
                            "--workers", "0", "--data-root", str(root), "--out", str(sweep / "resnet34-e4-s0")]) == 0
    evaluated = {p: p.stat().st_mtime_ns for p in sweep.glob("eval-*/results.json")}
    assert len(evaluated) == 3  # two budgets and the distilled run
    assert results.main([*args[:3], "1,2,4,8", *args[4:], "--no-train"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in evaluated.items())  # unchanged runs: evaluations reused
    rows = json.loads((tmp_path / "results" / "task2_sweep.json").read_text())
    assert [r["epochs"] for r in rows] == [1, 2, 4]
    assert rows[2]["resnet34"] is not None and rows[2]["shallow"] is None and rows[2]["shallow / resnet34"] is None
    assert re.search(r"\|\s+–\s+\|", readme.read_text())
    assert sorted(p.name for p in sweep.glob("*-e[48]-*")) == ["eval-e4-s0", "resnet34-e4-s0"]


def test_recipe_part_trains_each_option_and_writes_the_table(tmp_path):
    """The recipe options (plain, EMA, MixUp+CutMix) on shallow: one run each with its own flags,
    evaluated side by side, the table in the order of the options with minutes against plain."""
    root = make_list_root(tmp_path / "data", classes=3, per_class=4, size=24)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- task2-recipe:start -->\n<!-- task2-recipe:end -->\n")
    out = str(tmp_path / "runs")
    args = ["--part", "task2-recipe", "--epochs", "1", "--img-size", "16", "--batch-size", "4", "--workers", "0",
            "--jobs", "3",
            "--data-root", str(root), "--out", out, "--update-docs", "--docs", str(readme),
            "--results", str(tmp_path / "tables")]
    assert results.main(args) == 0
    rows = json.loads((tmp_path / "tables" / "task2_recipe.json").read_text())
    assert [r["recipe"] for r in rows] == list(RECIPES)
    plain = rows[0]["minutes"]  # a toy run may log 0.0 seconds, and then no ratio can be had
    assert [r["minutes / plain"] for r in rows] == ([pytest.approx(r["minutes"] / plain) for r in rows] if plain
                                                    else [None] * len(rows))
    for name in RECIPES:
        config = json.loads((tmp_path / "runs" / "task2-recipe" / f"shallow-{name}-e1-s0" / "config.json").read_text())
        assert config["ema"] == (0.998 if name == "ema" else None)
        assert config["cutmix"] == (1.0 if name == "mixup+cutmix" else 0.0)
    section = readme.read_text()
    assert "minutes / plain" in section and section.count("\n|") == 2 + len(RECIPES)
