"""Task 1, category classification: zero-shot against category-name prompts, and a linear probe.

Classes are the full category paths (the leaf level) that the catalog names; the top level of the
tree is read off the leaf scores (zero-shot: the best leaf under each top; probe: the summed
probabilities of its leaves), so one classifier answers both levels.
Metrics per level: accuracy, top-5 accuracy, macro-F1 and support-weighted F1.
"""

from __future__ import annotations

import numpy as np

from eclip.catalog.schema import category_parts, join_category
from eclip.tasks.bootstrap import mean_items
from eclip.tasks.context import Job, Outcome, TaskContext
from eclip.tasks.metrics import classification_metrics
from eclip.encode import fuse_query
from eclip.tasks.zeroshot import DEFAULT_TEMPLATES, category_prompts, class_vectors

TASK = "category"
HEADLINE = "probe_accuracy"


def _top_scores(scores: np.ndarray, classes: np.ndarray, reduce) -> tuple[np.ndarray, np.ndarray]:
    """Scores over top-level categories from scores over leaves (``reduce``: np.max or np.sum)."""
    tops = np.array([category_parts(c)[0] for c in classes], dtype=object)
    names = np.unique(tops)
    return np.stack([reduce(scores[:, tops == t], axis=1) for t in names], axis=1), names


def level_metrics(scores: np.ndarray, classes: np.ndarray, truth: np.ndarray,
                  reduce) -> dict[str, float]:
    """Leaf metrics under their names, top-level ones prefixed ``top_level_``."""
    out = classification_metrics(truth, classes[scores.argmax(axis=1)], scores, classes)
    top_scores, tops = _top_scores(scores, classes, reduce)
    truth_top = np.array([category_parts(c)[0] for c in truth], dtype=object)
    top = classification_metrics(truth_top, tops[top_scores.argmax(axis=1)], top_scores, tops)
    out.update({f"top_level_{k}": v for k, v in top.items()})
    return out


def run_category(ctx: TaskContext) -> None:
    listings = ctx.splits.listings
    labels = np.array([join_category(x.category_path) if x.category else None for x in listings],
                      dtype=object)
    has = lambda x: bool(x.category)  # noqa: E731
    train, val, test = ctx.rows("train", has), ctx.rows("val", has), ctx.rows("test", has)
    taxonomy = np.array(sorted({c for c in labels if c}), dtype=object)
    truth = labels[test]
    truth_top = np.array([category_parts(c)[0] for c in truth], dtype=object)
    test_groups = np.array(ctx.groups, dtype=object)[test]
    ctx.report.meta.update(category_classes=len(taxonomy), zero_shot_chance=1 / len(taxonomy))
    prompts = {views.name: class_vectors(views.encode_prompts,
                                         [category_prompts(c, DEFAULT_TEMPLATES) for c in taxonomy])
               for views in ctx.views if views.encode_prompts is not None}

    def evaluate(job: Job) -> Outcome:
        views, modality = job
        rows = []
        if views.name in prompts and modality in views.joint:
            vectors = prompts[views.name]
            if modality == "both":
                vectors = fuse_query(vectors)
            scores = views.joint[modality][test] @ vectors.T
            rows.append(("zero_shot_", [level_metrics(scores, taxonomy, truth, np.max)]))
            ctx.keep(TASK, job, "zero_shot_accuracy",
                     mean_items(test_groups, taxonomy[scores.argmax(axis=1)] == truth))
        probe = ctx.probe(TASK, job, labels, train, val, test)
        ctx.keep(TASK, job, "probe_accuracy", mean_items(test_groups, np.stack(
            [probe.classes[s.argmax(axis=1)] == truth for s in probe.test_scores])))
        rows.append(("probe_", [level_metrics(s, probe.classes, truth, np.sum)
                                for s in probe.test_scores]))
        top_scores, tops = _top_scores(probe.test_scores[0], probe.classes, np.sum)
        return rows, (truth_top, tops[top_scores.argmax(axis=1)])

    ctx.run(TASK, evaluate, figure="category_confusion")
