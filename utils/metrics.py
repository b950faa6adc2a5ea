"""Classification metrics (scikit-learn), one dict per evaluation."""
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support


def classification_metrics(targets, preds, num_classes):
    """Accuracy, weighted precision/recall/F1 (the original's averaging) and macro F1, as fractions."""
    labels = np.arange(num_classes)
    p, r, f1, _ = precision_recall_fscore_support(targets, preds, labels=labels, average="weighted",
                                                  zero_division=0)
    return {"accuracy": float(accuracy_score(targets, preds)), "precision": float(p),
            "recall": float(r), "f1": float(f1),
            "f1_macro": float(f1_score(targets, preds, labels=labels, average="macro", zero_division=0))}
