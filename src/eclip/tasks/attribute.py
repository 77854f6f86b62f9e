"""Task 2, attribute extraction: for every attribute key, predict the listing's value.

Three ways: zero-shot (listing vectors against prompts written as the training text writes an
attribute, e.g. ``color red``), a linear probe per key, and, for text, the value's own words found
in the title (``title_span``: a reference that needs no model; it abstains when no value, or two
unrelated values, are written in the title). Metrics per key: accuracy and
macro-F1; over keys: micro-F1 (with abstentions, precision and recall differ).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from eclip.catalog.schema import Listing
from eclip.tasks.bootstrap import micro_f1_items
from eclip.tasks.context import Job, Outcome, TaskContext
from eclip.tasks.data import MIN_LABELLED
from eclip.tasks.metrics import classification_metrics, micro_f1
from eclip.encode import fuse_query
from eclip.tasks.views import clean_titles
from eclip.tasks.zeroshot import class_vectors

TASK = "attribute"
HEADLINE = "probe_micro_f1"
SPAN_MODEL = "title_span"


def attribute_keys(ctx: TaskContext) -> list[str]:
    """Keys with at least two values among training listings and labelled listings in every split."""
    keys = []
    counts = {name: Counter(k for i in ctx.splits.index(name)
                            for k in ctx.splits.listings[i].attributes)
              for name in ("train", "val", "test")}
    for key in sorted(counts["train"]):
        values = {ctx.splits.listings[i].attributes.get(key) for i in ctx.splits.index("train")}
        if len(values - {None}) >= 2 and all(counts[s][key] >= MIN_LABELLED for s in counts):
            keys.append(key)
    return keys


def span_extract(titles: list[str], values: list[str]) -> list[str | None]:
    """The value written in each title as a whole word (case-insensitive). A value found inside
    another found one gives way ("red" in "dark red"); ``None`` when no value is found or when two
    unrelated ones are ("red or blue")."""
    patterns = [(v, re.compile(r"(?<!\w)" + re.escape(v) + r"(?!\w)", re.IGNORECASE))
                for v in values]
    out: list[str | None] = []
    for title in titles:
        found = [v for v, pattern in patterns if pattern.search(title)]
        kept = [v for v in found if not any(v != w and v.lower() in w.lower() for w in found)]
        out.append(kept[0] if len(kept) == 1 else None)
    return out


def _values(listings: list[Listing], key: str) -> np.ndarray:
    return np.array([x.attributes.get(key) for x in listings], dtype=object)


def run_attribute(ctx: TaskContext) -> None:
    listings = ctx.splits.listings
    keys = attribute_keys(ctx)
    ctx.report.meta["attribute_keys"] = keys
    if not keys:
        reason = ("field 'attributes': no key has two values in train and labelled listings in "
                  "val and test")
        ctx.report.skipped[TASK] = reason
        ctx.log(f"skipping {TASK}: {reason}")
        return
    rows = {key: {s: ctx.rows(s, lambda x, k=key: k in x.attributes)
                  for s in ("train", "val", "test")} for key in keys}
    labels = {key: _values(listings, key) for key in keys}
    groups = np.array(ctx.groups, dtype=object)
    values = {key: np.array(sorted(set(labels[key]) - {None}), dtype=object) for key in keys}
    prompts = {(views.name, key): class_vectors(views.encode_prompts, [
        [views.attribute_format.format(key=key, value=v)] for v in values[key]])
        for views in ctx.views if views.encode_prompts is not None for key in keys}

    def evaluate(job: Job) -> Outcome:
        views, modality = job
        protocols: dict[str, list[dict[str, tuple[np.ndarray, np.ndarray]]]] = {}
        for key in keys:
            train, val, test = (rows[key][s] for s in ("train", "val", "test"))
            if (views.name, key) in prompts and modality in views.joint:
                vectors = prompts[(views.name, key)]
                if modality == "both":
                    vectors = fuse_query(vectors)
                scores = views.joint[modality][test] @ vectors.T
                seeds = protocols.setdefault("zero_shot_", [{}])
                seeds[0][key] = (labels[key][test], values[key][scores.argmax(axis=1)])
            probe = ctx.probe(TASK, job, labels[key], train, val, test, key=key)
            seeds = protocols.setdefault("probe_", [{} for _ in probe.test_scores])
            for seed, scores in enumerate(probe.test_scores):
                seeds[seed][key] = (labels[key][test], probe.classes[scores.argmax(axis=1)])
        for prefix, per_seed in protocols.items():  # per-item outcomes: (listing, key) items
            used = list(per_seed[0])
            outcomes = [_item_outcomes(predictions, used) for predictions in per_seed]
            ctx.keep(TASK, job, prefix + "micro_f1", micro_f1_items(
                np.concatenate([groups[rows[key]["test"]] for key in used]),
                np.stack([correct for correct, _ in outcomes]),
                np.stack([made for _, made in outcomes])))
        return [(prefix, [_key_metrics(predictions) for predictions in per_seed])
                for prefix, per_seed in protocols.items()], None

    ctx.run(TASK, evaluate)
    if ctx.config.reference:
        titles = clean_titles(listings)
        predictions = {}
        for key in keys:
            test = rows[key]["test"]
            known = sorted({v for v in labels[key][rows[key]["train"]] if v})
            predictions[key] = (labels[key][test], np.array(
                span_extract([titles[i] for i in test], known), dtype=object))
        metrics = _key_metrics(predictions)
        covered = [p is not None for _, predicted in predictions.values() for p in predicted]
        metrics["coverage"] = float(np.mean(covered))
        ctx.add_all(TASK, "text", SPAN_MODEL, "span_", [metrics])


def _item_outcomes(predictions: dict[str, tuple[np.ndarray, np.ndarray]],
                   keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(correct, made) of every (listing, key) item, the keys in order: what micro-F1 counts."""
    truth = [t for key in keys for t in predictions[key][0]]
    predicted = [p for key in keys for p in predictions[key][1]]
    made = np.array([p is not None for p in predicted])
    return made & np.array([p == t for t, p in zip(truth, predicted)], dtype=bool), made


def _key_metrics(predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Per key accuracy and macro-F1 over the values in the truth (an abstention is wrong), and
    micro-F1 over all keys."""
    out: dict[str, float] = {}
    for key, (truth, predicted) in predictions.items():
        shown = ["" if p is None else str(p) for p in predicted]
        metrics = classification_metrics(list(truth), shown, labels=sorted(set(truth)))
        out[f"{key}_accuracy"] = metrics["accuracy"]
        out[f"{key}_macro_f1"] = metrics["macro_f1"]
    truth_all = [t for truth, _ in predictions.values() for t in truth]
    predicted_all = [p for _, predicted in predictions.values() for p in predicted]
    out["micro_f1"] = micro_f1(truth_all, predicted_all)
    return out
