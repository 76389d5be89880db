"""Evaluation: a model's predictions, and the metrics computed from them (scikit-learn does the counting)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, confusion_matrix, top_k_accuracy_score


@torch.inference_mode()
def predict(model: torch.nn.Module, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and true labels for every sample of ``loader``, in order."""
    model.eval()
    probs, targets = [], []
    for x, y in loader:
        probs.append(torch.softmax(model(x.to(device, non_blocking=True)).float(), dim=1).cpu())
        targets.append(torch.as_tensor(y))
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


def accuracy(probs: np.ndarray, targets: np.ndarray) -> float:
    return float((probs.argmax(1) == targets).mean())


def topk_accuracy(probs: np.ndarray, targets: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    if k >= probs.shape[1]:
        return 1.0
    return float(top_k_accuracy_score(targets, probs, k=k, labels=np.arange(probs.shape[1])))


def confusion(true: pd.Series, pred: pd.Series, class_names: list[str], normalize: bool = True) -> pd.DataFrame:
    """Confusion matrix (rows: true class, columns: predicted), normalised per true class."""
    cm = confusion_matrix(true, pred, labels=class_names, normalize="true" if normalize else None)
    return pd.DataFrame(np.nan_to_num(cm), index=class_names, columns=class_names)


def most_confused_pairs(predictions: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The (true, predicted) class pairs with the most mistakes."""
    wrong = predictions[predictions["true"] != predictions["pred"]]
    pairs = wrong.groupby(["true", "pred"]).size().rename("count").reset_index()
    return pairs.sort_values(["count", "true", "pred"], ascending=[False, True, True]).head(n).reset_index(drop=True)


def misclassified(predictions: pd.DataFrame) -> pd.DataFrame:
    """Wrong predictions, most confident first."""
    wrong = predictions[predictions["true"] != predictions["pred"]]
    return wrong.sort_values("top1_prob", ascending=False).reset_index(drop=True)


def per_class_report(predictions: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (scikit-learn's report as a table)."""
    report = classification_report(predictions["true"], predictions["pred"], labels=class_names,
                                    output_dict=True, zero_division=0)
    report.pop("accuracy", None)  # a single number, not a row: scikit-learn would spread it over every column
    table = pd.DataFrame(report).T.astype({"support": int})
    if table.loc[class_names, "support"].nunique() == 1:  # equal classes: the weighted average is the macro one
        table = table.drop(index="weighted avg")
    return table


def dominant_prediction(predictions: pd.DataFrame) -> tuple[str, float]:
    """The class predicted most often, and the share of test images it was predicted for."""
    counts = predictions["pred"].value_counts(normalize=True)
    return str(counts.index[0]), float(counts.iloc[0])


def prediction_topk_accuracy(predictions: pd.DataFrame, k: int) -> float:
    """Top-k accuracy from a predictions table (its top-k columns)."""
    cols = [c for c in predictions.columns if c.startswith("top") and c.endswith("_class")][:k]
    return float(predictions[cols].eq(predictions["true"], axis=0).any(axis=1).mean())


def per_class_accuracy(predictions: pd.DataFrame, train_counts: pd.Series) -> pd.DataFrame:
    """Accuracy (recall) per true class, beside that class's number of training images."""
    acc = predictions.assign(correct=predictions["true"] == predictions["pred"]).groupby("true")["correct"].mean()
    return pd.DataFrame({"accuracy": acc, "train_images": train_counts.reindex(acc.index)}).rename_axis("class")
