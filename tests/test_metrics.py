import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from test_rrdb import add_ratios
from utils.metrics import classification_metrics


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


def test_ratio_to_baseline():
    rows = add_ratios([{"accuracy": 0.60}, {"accuracy": 0.54}, {"accuracy": 0.50}, {"accuracy": 0.66}], 0.60)
    assert [r["ratio_to_baseline"] for r in rows] == pytest.approx([1.0, 0.9, 0.8333333, 1.1])
    assert [r["pass_90"] for r in rows] == [True, True, False, True]
