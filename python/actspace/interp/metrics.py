"""AUROC and balanced accuracy, the two numbers every scorer reports (delphi's definitions:
balanced accuracy = (true-positive rate + true-negative rate) / 2 over binary predictions;
AUROC over a continuous score: the probability that a random positive scores above a random
negative, ties counting one half). Plain Python: the inputs are tens to hundreds of numbers,
and scikit-learn is not a dependency."""
from __future__ import annotations

import math


def auroc(labels, scores) -> float | None:
    """Area under the ROC curve of `scores` (higher = more positive) for bool `labels`,
    by the Mann-Whitney rank sum with mid-ranks for ties. None when either class is empty
    or a score is not finite (an undefined AUROC is never reported as 0.5)."""
    labels = [bool(v) for v in labels]
    scores = [float(s) for s in scores]
    if len(labels) != len(scores):
        raise ValueError(f"labels and scores differ in length: {len(labels)} vs {len(scores)}")
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0 or not all(math.isfinite(s) for s in scores):
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):                      # mid-rank of each run of equal scores
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, lab in zip(ranks, labels) if lab)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def balanced_accuracy(labels, predictions) -> float | None:
    """(TPR + TNR) / 2 of bool predictions against bool labels; None when a class is empty."""
    labels = [bool(v) for v in labels]
    predictions = [bool(p) for p in predictions]
    if len(labels) != len(predictions):
        raise ValueError(f"labels and predictions differ in length: {len(labels)} vs "
                         f"{len(predictions)}")
    pos = [p for p, lab in zip(predictions, labels) if lab]
    neg = [p for p, lab in zip(predictions, labels) if not lab]
    if not pos or not neg:
        return None
    return (sum(pos) / len(pos) + sum(not p for p in neg) / len(neg)) / 2
