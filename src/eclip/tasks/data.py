"""What an evaluation runs on: the listings split by catalog, and which tasks their labels allow.

Probes train on ``train``, thresholds and hyper-parameters are chosen on ``val``, and every number in
the report is measured on ``test``. No catalog is in two splits.
"""

from __future__ import annotations

from collections import Counter

from eclip.catalog.splits import SPLITS, EvalSplits, eval_splits

__all__ = ["MIN_LABELLED", "SPLITS", "TASKS", "EvalSplits", "eval_splits", "task_availability"]

TASKS = ("category", "attribute", "matching", "clustering", "adult")
MIN_LABELLED = 2  # a split needs at least this many labelled listings for a task to run


def _labelled(splits: EvalSplits, has) -> dict[str, int]:
    return {name: sum(1 for i in splits.index(name) if has(splits.listings[i])) for name in SPLITS}


def _missing(field: str, counts: dict[str, int], what: str) -> str | None:
    short = [name for name in SPLITS if counts[name] < MIN_LABELLED]
    if not short:
        return None
    if sum(counts.values()) == 0:
        return f"missing field '{field}': no listing has {what}"
    return (f"field '{field}': too few listings with {what} in the "
            f"{' and '.join(short)} split(s) ({', '.join(f'{k} {v}' for k, v in counts.items())})")


def task_availability(splits: EvalSplits) -> dict[str, str | None]:
    """Per task, ``None`` when it can run, else why not (the field that is missing or too thin)."""
    out: dict[str, str | None] = {}
    out["category"] = _missing("category", _labelled(splits, lambda x: bool(x.category)),
                               "a category")
    out["attribute"] = _missing("attributes", _labelled(splits, lambda x: bool(x.attributes)),
                                "attributes")
    sizes = Counter(x.catalog_id for x in splits.listings if x.catalog_id)
    shared = _labelled(splits, lambda x: bool(x.catalog_id) and sizes[x.catalog_id] > 1)
    reason = _missing("catalog_id", shared, "a catalog id shared with another listing")
    out["matching"] = out["clustering"] = reason
    positives = _labelled(splits, lambda x: x.adult is True)
    negatives = _labelled(splits, lambda x: x.adult is False)
    reason = _missing("adult", positives, "adult=true")
    out["adult"] = reason or _missing("adult", negatives, "adult=false")
    return out
