"""Classification metrics (scikit-learn), one dict per evaluation."""
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(targets, top, num_classes):
    """Accuracy, weighted precision/recall/F1 (the original's averaging) and macro F1, as fractions.

    ``top`` holds the predicted class per image, or the ``[N, k]`` best classes, best first: then
    ``top5`` (the target among the first five) is added.
    """
    top = np.asarray(top)
    preds = top[:, 0] if top.ndim == 2 else top
    labels = np.arange(num_classes)
    p, r, f1, _ = precision_recall_fscore_support(targets, preds, labels=labels, average="weighted",
                                                  zero_division=0)
    metrics = {"accuracy": float(accuracy_score(targets, preds)), "precision": float(p),
               "recall": float(r), "f1": float(f1),
               "f1_macro": float(f1_score(targets, preds, labels=labels, average="macro", zero_division=0))}
    if top.ndim == 2:
        metrics["top5"] = float((top[:, :5] == np.asarray(targets)[:, None]).any(1).mean())
    return metrics


def per_class_accuracy(targets, preds, num_classes):
    """Fraction of each class's images predicted as that class (per-class recall); NaN for a
    class with no images."""
    cm = confusion_matrix(targets, preds, labels=np.arange(num_classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(cm) / cm.sum(1)
