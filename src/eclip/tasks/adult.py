"""Task 5, adult (age-restricted) product recognition: a binary probe on frozen vectors.

Logistic regression with balanced class weights (adult products are rare); C is chosen on val by
PR-AUC and the decision threshold is the F1-best one on val. Metrics on test: ROC-AUC, PR-AUC,
recall at 95 % precision, F1 and the confusion counts at the val threshold.
"""

from __future__ import annotations

import numpy as np

from eclip.tasks.bootstrap import pr_auc_items, roc_auc_items
from eclip.tasks.context import Job, Outcome, TaskContext
from eclip.tasks.metrics import (best_f1_threshold, confusion_at, f1_from_confusion, pr_auc,
                                 recall_at_precision, roc_auc)

TASK = "adult"
HEADLINE = "pr_auc"


def _pr_auc_selector(truth: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> float:
    return pr_auc(truth, scores[:, list(classes).index(True)])


def run_adult(ctx: TaskContext) -> None:
    labels = np.array([x.adult is True for x in ctx.splits.listings])  # only labelled rows are read
    has = lambda x: x.adult is not None  # noqa: E731
    train, val, test = ctx.rows("train", has), ctx.rows("val", has), ctx.rows("test", has)
    y_val, y_test = labels[val], labels[test]
    test_groups = np.array(ctx.groups, dtype=object)[test]
    ctx.report.meta["adult_test"] = {"adult": int(y_test.sum()), "listings": len(test)}

    def evaluate(job: Job) -> Outcome:
        views, modality = job
        probe = ctx.probe(TASK, job, labels, train, val, test, select=_pr_auc_selector,
                          class_weight="balanced")
        column = list(probe.classes).index(True)
        per_seed = []
        for val_scores, test_scores in zip(probe.val_scores, probe.test_scores):
            p_val, p_test = val_scores[:, column], test_scores[:, column]
            counts = confusion_at(y_test, p_test, best_f1_threshold(y_val, p_val))
            per_seed.append({"roc_auc": roc_auc(y_test, p_test), "pr_auc": pr_auc(y_test, p_test),
                             "recall@95p": recall_at_precision(y_test, p_test, 0.95),
                             "f1": f1_from_confusion(counts), **counts})
        p_tests = np.stack([scores[:, column] for scores in probe.test_scores])
        ctx.keep(TASK, job, "pr_auc", pr_auc_items(test_groups, y_test, p_tests))
        ctx.keep(TASK, job, "roc_auc", roc_auc_items(test_groups, y_test, p_tests))
        return [("", per_seed)], (y_test, probe.test_scores[0][:, column])

    ctx.run(TASK, evaluate, figure="adult_scores")
