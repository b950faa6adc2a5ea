import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from test_dw import class_losses, per_class_table, top_confusions
from test_rrdb import add_ratios
from utils.metrics import classification_metrics, per_class_accuracy


def test_metrics_by_hand():
    targets = np.array([0, 0, 1, 1])
    preds = np.array([0, 1, 1, 1])
    m = classification_metrics(targets, preds, 2)
    assert m["accuracy"] == 0.75
    # class 0: P=1, R=0.5, F1=2/3; class 1: P=2/3, R=1, F1=0.8; both have weight 1/2
    assert m["precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_metrics_match_sklearn_with_absent_classes():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 200)  # class 4 never occurs, class 5 is only ever predicted
    preds = np.where(rng.random(200) < 0.6, targets, rng.integers(0, 6, 200))
    m = classification_metrics(targets, preds, 6)
    kw = dict(labels=np.arange(6), zero_division=0)
    assert m["precision"] == pytest.approx(precision_score(targets, preds, average="weighted", **kw))
    assert m["recall"] == pytest.approx(recall_score(targets, preds, average="weighted", **kw))
    assert m["f1"] == pytest.approx(f1_score(targets, preds, average="weighted", **kw))
    assert m["f1_macro"] == pytest.approx(f1_score(targets, preds, average="macro", **kw))
    assert m["f1_macro"] < m["f1"]  # the two absent classes pull the macro mean down


def test_top5_counts_the_target_among_the_first_five():
    targets = np.array([0, 1, 2, 3])
    top = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [1, 0, 3, 4, 5, 2], [6, 5, 4, 2, 1, 3]])
    m = classification_metrics(targets, top, 7)
    assert m["accuracy"] == 0.25 and m["top5"] == 0.5  # image 0 first; image 1 fifth; 2 and 3 sixth
    assert "top5" not in classification_metrics(targets, top[:, 0], 7)


def test_per_class_accuracy_agrees_with_sklearn():
    assert per_class_accuracy(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), 3)[:2] == \
        pytest.approx([0.5, 2 / 3])
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 5, 300)
    preds = np.where(rng.random(300) < 0.5, targets, rng.integers(0, 6, 300))
    acc = per_class_accuracy(targets, preds, 6)
    assert acc[:5] == pytest.approx(recall_score(targets, preds, labels=np.arange(5), average=None))
    assert np.isnan(acc[5])  # no images of class 5


def test_ratio_to_baseline():
    rows = add_ratios([{"accuracy": 0.60}, {"accuracy": 0.54}, {"accuracy": 0.50}, {"accuracy": 0.66}], 0.60, 50)
    assert [r["ratio_to_baseline"] for r in rows] == pytest.approx([1.0, 0.9, 0.8333333, 1.1])
    assert [r["pass_90"] for r in rows] == [True, True, False, True]


def test_spreads_are_sample_standard_deviations_and_one_seed_has_none():
    import pandas as pd

    from experiments.results.tables import mean_std
    df = pd.DataFrame({"model": ["a"] * 3 + ["b"], "accuracy": [0.1, 0.2, 0.3, 0.5]})
    out = mean_std(df, ["model"], ["accuracy"]).set_index("model")
    assert out.loc["a", "accuracy_std"] == pytest.approx(0.1)  # ddof=1; ddof=0 would give 0.0816
    assert pd.isna(out.loc["b", "accuracy_std"]) and out.loc["b", "seeds"] == 1


def test_class_losses_leave_out_classes_without_test_images():
    # a trial on a few images (--limit) leaves classes with no image: their accuracy is NaN
    top = np.array([[0], [0], [1], [2]])
    full, red = (np.array([0, 0, 2, 2]), top), (np.array([0, 0, 2, 2]), np.array([[0], [1], [2], [0]]))
    table = per_class_table({32: {"RGB": full, "R": red}}, ["a", "b", "c"])
    losses = class_losses(table, ["RGB", "R"])
    assert list(losses["name"]) == ["a", "c"] and losses["worst_combo"].eq("R").all()


def test_top_confusions_count_each_mistake_against_its_class():
    """The most frequent mistakes of each combination, each as a share of its true class's images;
    a combination without mistakes has none."""
    targets = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([[1], [1], [2], [0], [1], [0], [2], [2]])
    table = top_confusions({32: {"RGB": (targets, preds), "R": (targets, targets[:, None])}}, ["a", "b", "c"], top=2)
    assert table.to_dict("records") == [
        {"img_size": 32, "combo": "RGB", "true": "a", "predicted": "b", "count": 2, "share": 0.5},
        {"img_size": 32, "combo": "RGB", "true": "a", "predicted": "c", "count": 1, "share": 0.25}]
