"""Paired bootstrap over catalogs: an interval for the difference of two models on one metric.

The listings of one product are not independent (a model that knows a product knows all of its
listings), so the unit that is resampled is the *catalog*: a resample draws the test catalogs with
replacement, and every item of a drawn catalog (a listing, a (listing, attribute key) item, a
matching pair) counts as many times as its catalog was drawn. Every model, task and modality sees
the same resamples, so the two models of a comparison are paired. The metric is recomputed on each
resample from the per-item outcomes that the tasks keep on test (``Items``):

- ``mean``: the mean of a per-item value (accuracy: 1 for a correct item, 0 for a wrong one);
- ``micro_f1``: ``2 * correct / (made + items)`` over items that may abstain (``made`` = 0): the
  harmonic mean of precision ``correct / made`` and recall ``correct / items``;
- ``bcubed_f1``: the harmonic mean of the mean per-listing B-cubed precision and recall;
- ``roc_auc``: the probability that a positive outscores a negative (ties count half), over
  weighted items;
- ``pr_auc``: average precision as sklearn defines it (the precision at each distinct score times
  the recall it adds), over weighted items.

A matching pair joins two listings that may belong to two catalogs: it counts ``(k_a + k_b) / 2``
times when its catalogs are drawn ``k_a`` and ``k_b`` times (half of it belongs to each; a positive
pair, one catalog, counts ``k`` times). Metrics measured over several probe seeds are the mean over
the seeds on every resample, as in the report; the models of several training seeds of one name
(``eclip.tasks.seeds``) join that seed axis, so their metric is the mean over every seed too.

Cost: resamples are drawn in chunks of ``CHUNK`` as a ``[chunk, catalogs]`` matrix of draw counts.
Mean-type metrics are then one product of it with per-catalog sums (``O(B * catalogs)``); AUCs sort
the items once and, per resample, add up the weights in score order (``O(B * items)``). No item is
ever copied.

The interval is the percentile interval of the resampled differences. Verdict: ``win`` when its
low end is above 0, ``loss`` when its high end is below 0, ``tie`` when it covers 0 (two identical
models give exactly [0, 0]: a tie).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from eclip.errors import ConfigError
from eclip.tasks.report import Comparison

if TYPE_CHECKING:  # pragma: no cover
    from eclip.tasks.context import EvalConfig, TaskContext

KINDS = ("mean", "micro_f1", "bcubed_f1", "roc_auc", "pr_auc")
CHUNK = 50  # resamples drawn (and evaluated) together; each chunk is seeded on its own
CACHE_ELEMENTS = 1 << 18  # AUCs: resamples x items evaluated in one pass
SUBJECT = "eclip"  # the subject when eval.subject is not set and a model has this name


# ----------------------------------------------------------------------------------- outcomes


@dataclass
class Items:
    """Per-item outcomes of one model on one metric of one task and modality, on test.

    ``groups`` holds each item's catalog (``[n]``), or the two catalogs of a pair (``[n, 2]``);
    ``values`` the arrays the ``kind`` reads, with a leading seed axis where seeds apply.
    """

    kind: str
    groups: np.ndarray
    values: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; known: {', '.join(KINDS)}")
        self.groups = np.asarray(self.groups).astype(str)

    def __len__(self) -> int:
        return len(self.groups)


def _seeds(values, n: int) -> np.ndarray:
    """``values`` as a float array ``[seeds, n]`` (one seed when 1-D)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr.reshape(1, -1) if arr.ndim == 1 else arr
    if arr.shape[1] != n:
        raise ValueError(f"{arr.shape[1]} values for {n} items")
    return arr


def mean_items(groups: Sequence[Hashable], values) -> Items:
    """A mean of per-item values (``[n]`` or ``[seeds, n]``), e.g. correctness for accuracy."""
    return Items("mean", np.asarray(groups), {"value": _seeds(values, len(groups))})


def micro_f1_items(groups: Sequence[Hashable], correct, made) -> Items:
    """Micro-F1 of items that may abstain: ``correct`` and ``made`` (a prediction was made), 0/1."""
    n = len(groups)
    return Items("micro_f1", np.asarray(groups),
                 {"correct": _seeds(correct, n), "made": _seeds(made, n)})


def bcubed_items(groups: Sequence[Hashable], precision, recall) -> Items:
    """B-cubed F1 from every listing's B-cubed precision and recall (``[n]``: one clustering, or
    ``[seeds, n]``: the F1 of each, averaged)."""
    n = len(groups)
    return Items("bcubed_f1", np.asarray(groups),
                 {"precision": _seeds(precision, n), "recall": _seeds(recall, n)})


def roc_auc_items(groups, labels, scores) -> Items:
    """ROC-AUC of ``scores`` (``[n]`` or ``[seeds, n]``) against boolean ``labels``."""
    n = len(groups)
    return Items("roc_auc", np.asarray(groups),
                 {"labels": np.asarray(labels, dtype=bool), "scores": _seeds(scores, n)})


def pr_auc_items(groups, labels, scores) -> Items:
    """Average precision of ``scores`` (``[n]`` or ``[seeds, n]``) against boolean ``labels``."""
    n = len(groups)
    return Items("pr_auc", np.asarray(groups),
                 {"labels": np.asarray(labels, dtype=bool), "scores": _seeds(scores, n)})


# ------------------------------------------------------------------------------------ resamples


def counts_of(draws: np.ndarray, n_catalogs: int) -> np.ndarray:
    """``[b, n_catalogs]``: how many times each catalog is among each row of ``draws``."""
    draws = np.asarray(draws, dtype=np.int64)
    b = len(draws)
    flat = (np.arange(b, dtype=np.int64)[:, None] * n_catalogs + draws).ravel()
    return np.bincount(flat, minlength=b * n_catalogs).reshape(b, n_catalogs).astype(np.float64)


def resampled_counts(n_catalogs: int, resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Chunks of catalog draw counts, ``resamples`` rows in all: each row draws ``n_catalogs``
    catalogs with replacement. Chunk ``c`` is seeded with ``[seed, c]``, so the draws depend on
    nothing but ``(n_catalogs, resamples, seed)``."""
    for c, start in enumerate(range(0, resamples, CHUNK)):
        rng = np.random.default_rng([seed, c])
        draws = rng.integers(n_catalogs, size=(min(CHUNK, resamples - start), n_catalogs))
        yield counts_of(draws, n_catalogs)


class _Prepared:
    """``Items`` bound to a catalog index: per-catalog sums (mean-type metrics) or the items sorted
    by score once per seed (AUCs), so that each resample costs one pass."""

    def __init__(self, items: Items, catalogs: np.ndarray):
        self.kind = items.kind
        codes = np.searchsorted(catalogs, items.groups)
        codes = np.minimum(codes, len(catalogs) - 1)
        if len(items) and not np.array_equal(catalogs[codes], items.groups):
            missing = sorted(set(items.groups.ravel()) - set(catalogs))[:3]
            raise ValueError(f"items of catalogs outside the resampled ones: {missing}")
        self.codes = codes
        self.n_catalogs = len(catalogs)
        self.n_items = len(items)
        v = items.values
        if self.kind in ("roc_auc", "pr_auc"):
            self.sorted = [self._rank(scores, v["labels"], codes) for scores in v["scores"]]
            return
        if self.kind == "mean":
            columns = [v["value"].mean(axis=0)]  # the seed mean of a mean is the mean of means
        elif self.kind == "micro_f1":
            columns = list(v["correct"]) + list(v["made"])
        else:
            columns = list(v["precision"]) + list(v["recall"])
        columns.append(np.ones(len(items)))
        self.sums = np.stack([self._per_catalog(c) for c in columns], axis=1)  # [G, m]

    def _per_catalog(self, values: np.ndarray) -> np.ndarray:
        if self.codes.ndim == 1:
            return np.bincount(self.codes, weights=values, minlength=self.n_catalogs)
        half = np.repeat(values / 2, 2)
        return np.bincount(self.codes.ravel(), weights=half, minlength=self.n_catalogs)

    @staticmethod
    def _rank(scores: np.ndarray, labels: np.ndarray, codes: np.ndarray) -> dict:
        """Positives and negatives by descending score, and for every positive the number of
        negatives scored above it (``above``), at least as high (``upto``) and the number of
        positives scored at least as high (``upto_pos``): where its tied run ends."""
        order = np.argsort(-scores, kind="stable")
        s, y, c = scores[order], labels[order], codes[order]
        s_pos, s_neg = s[y], s[~y]
        neg_up, pos_up = s_neg[::-1], s_pos[::-1]  # ascending
        above = len(s_neg) - np.searchsorted(neg_up, s_pos, side="right")
        upto = len(s_neg) - np.searchsorted(neg_up, s_pos, side="left")
        upto_pos = len(s_pos) - np.searchsorted(pos_up, s_pos, side="left")
        return {"pos": c[y], "neg": c[~y], "above": above, "upto": upto,
                "neg_ties": not np.array_equal(above, upto), "upto_pos": upto_pos,
                "pos_ties": not np.array_equal(upto_pos, np.arange(1, len(s_pos) + 1))}

    @staticmethod
    def _weights(counts: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Item weights (AUCs do not depend on their scale: a pair gets ``k_a + k_b``)."""
        if codes.ndim == 1:
            return counts[:, codes]
        return counts[:, codes[:, 0]] + counts[:, codes[:, 1]]

    def statistic(self, counts: np.ndarray) -> np.ndarray:
        """The metric on every row of ``counts`` (``[b, catalogs]``), NaN where undefined."""
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.kind in ("roc_auc", "pr_auc"):
                # a few rows at a time, so that the [rows, items] arrays stay in cache
                rows = max(1, min(len(counts), CACHE_ELEMENTS // max(self.n_items, 1)))
                return np.concatenate([
                    np.mean([self._auc(counts[i:i + rows], r) for r in self.sorted], axis=0)
                    for i in range(0, len(counts), rows)]) if len(counts) else np.zeros(0)
            totals = counts @ self.sums  # [b, m]
            items = totals[:, -1]
            if self.kind == "mean":
                return totals[:, 0] / items
            if self.kind == "micro_f1":
                seeds = (totals.shape[1] - 1) // 2
                correct, made = totals[:, :seeds], totals[:, seeds:2 * seeds]
                f1 = np.where(correct > 0, 2 * correct / (made + items[:, None]), 0.0)
                return np.where(items > 0, f1.mean(axis=1), np.nan)
            seeds = (totals.shape[1] - 1) // 2
            precision = totals[:, :seeds] / items[:, None]
            recall = totals[:, seeds:2 * seeds] / items[:, None]
            return (2 * precision * recall / (precision + recall)).mean(axis=1)

    def _auc(self, counts: np.ndarray, r: dict) -> np.ndarray:
        """ROC-AUC or average precision on every row of ``counts``: O(items) per row.

        With ``N[k]`` the weight of the ``k`` highest-scored negatives (a cumulative sum), a
        positive outscores ``N[-1] - N[upto]`` of the negative weight and ties with
        ``N[upto] - N[above]`` (counted half); its tied run ends with ``P[upto_pos]`` positive and
        ``N[upto]`` negative weight, the precision that average precision gives its recall."""
        if len(r["pos"]) == 0 or len(r["neg"]) == 0:
            return np.full(len(counts), np.nan)
        wp, wn = self._weights(counts, r["pos"]), self._weights(counts, r["neg"])
        negative = np.zeros((len(counts), wn.shape[1] + 1))
        np.cumsum(wn, axis=1, out=negative[:, 1:])
        total_positive, total_negative = wp.sum(axis=1), negative[:, -1]
        upto = negative[:, r["upto"]]
        if self.kind == "roc_auc":
            tied = upto + negative[:, r["above"]] if r["neg_ties"] else 2 * upto
            outscored = total_positive * total_negative - np.einsum("ij,ij->i", wp, tied) / 2
            return outscored / (total_positive * total_negative)
        positive = np.cumsum(wp, axis=1)
        if r["pos_ties"]:
            positive = positive[:, r["upto_pos"] - 1]
        called = positive + upto
        precision = np.divide(positive, called, out=np.zeros_like(positive), where=called > 0)
        return np.einsum("ij,ij->i", wp, precision) / total_positive


def statistics(items: dict, catalogs: Sequence[str] | None = None, *, resamples: int = 1000,
               seed: int = 0, counts: np.ndarray | None = None
               ) -> tuple[dict, dict, np.ndarray]:
    """The observed metric and its value on every resample, for every ``Items`` of ``items`` (a
    dict), all on the same resamples of ``catalogs`` (default: every catalog of the items).

    ``counts`` (``[B, catalogs]`` draw counts) replaces the seeded resamples. Returns
    ``(observed by key, [B] resampled values by key, the sorted catalogs)``.
    """
    if catalogs is None:
        catalogs = sorted({g for it in items.values() for g in np.asarray(it.groups).ravel()})
    catalogs = np.asarray(sorted(str(c) for c in catalogs), dtype=str)
    prepared = {key: _Prepared(it, catalogs) for key, it in items.items()}
    ones = np.ones((1, len(catalogs)))
    observed = {key: float(p.statistic(ones)[0]) for key, p in prepared.items()}
    chunks = ([np.asarray(counts, dtype=np.float64)] if counts is not None
              else resampled_counts(len(catalogs), resamples, seed))
    parts: dict = {key: [] for key in items}
    for chunk in chunks:
        for key, p in prepared.items():
            parts[key].append(p.statistic(chunk))
    resampled = {key: np.concatenate(v) if v else np.zeros(0) for key, v in parts.items()}
    return observed, resampled, catalogs


# ---------------------------------------------------------------------------------- intervals


def verdict_of(low: float, high: float) -> str:
    """``win`` (interval above 0), ``loss`` (below 0), ``tie`` (covers 0), ``n/a`` (undefined)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return "win" if low > 0 else "loss" if high < 0 else "tie"


def interval(deltas: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the resampled differences (resamples where the metric is
    undefined for either model are left out)."""
    deltas = np.asarray(deltas, dtype=np.float64)
    deltas = deltas[np.isfinite(deltas)]
    if len(deltas) == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return float(low), float(high)


@dataclass
class Interval:
    delta: float
    low: float
    high: float
    verdict: str


def paired_bootstrap(a: Items, b: Items, catalogs: Sequence[str] | None = None, *,
                     resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                     counts: np.ndarray | None = None) -> Interval:
    """Metric of ``a`` minus metric of ``b`` (the same items, two models), with its interval from
    the same catalog resamples for both."""
    observed, resampled, _ = statistics({"a": a, "b": b}, catalogs, resamples=resamples,
                                        seed=seed, counts=counts)
    low, high = interval(resampled["a"] - resampled["b"], confidence)
    return Interval(observed["a"] - observed["b"], low, high, verdict_of(low, high))


# ------------------------------------------------------------------------------- in the suite


def choose_subject(models: Sequence[str], subject: str | None = None) -> str | None:
    """The model the report's verdicts speak about: ``subject`` (``eval.subject``, ``eclip eval
    --subject NAME``) where given, else the model named ``eclip``, else the last one given."""
    if subject is not None:
        if subject not in models:
            raise ConfigError(f"eval.subject: {subject!r} is not among the evaluated models "
                              f"({', '.join(models)})")
        return subject
    if not models:
        return None
    return SUBJECT if SUBJECT in models else models[-1]


def default_pairs(models: Sequence[str], references: Sequence[str] = (),
                  subject: str | None = None) -> list[tuple[str, str]]:
    """The subject (:func:`choose_subject`) against every other model, whatever its name, but the
    references of the report (TF-IDF, ...): ``[(eclip, baseline), (eclip, clip)]`` for models
    baseline, clip and eclip; ``[(eclip, init)]`` for init and eclip."""
    if subject is None:
        subject = choose_subject(models)
    if subject not in models:
        return []
    return [(subject, m) for m in models if m != subject and m not in references]


def check_config(cfg: EvalConfig, names: Sequence[str]) -> None:
    """Reject a bad ``eval.bootstrap`` / ``confidence`` / ``compare`` before any work is done."""
    if not isinstance(cfg.bootstrap, int) or cfg.bootstrap < 0:
        raise ConfigError(f"eval.bootstrap must be an integer >= 0 (0: no intervals), got "
                          f"{cfg.bootstrap!r}")
    if not 0 < cfg.confidence < 1:
        raise ConfigError(f"eval.confidence must lie in (0, 1), got {cfg.confidence!r}")
    for pair in cfg.compare or []:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, str) for x in pair) or pair[0] == pair[1]):
            raise ConfigError(f"eval.compare: {pair!r} must be [MODEL, REFERENCE], two names")
        unknown = [x for x in pair if x not in names]
        if unknown:
            raise ConfigError(f"eval.compare: {pair!r} names {', '.join(unknown)}, not among "
                              f"the evaluated models ({', '.join(names)})")


def compare_models(ctx: TaskContext, order: Sequence[str] | None = None) -> list[Comparison]:
    """The comparisons of the configured pairs (``eval.compare``, else ``default_pairs``) on every
    (task, modality, metric) whose per-item outcomes the tasks kept, added to the report.

    ``order``: the model names of the outcomes in the order they were given (default: the views'
    names; the suite passes it when training seeds were folded into one name)."""
    cfg, report = ctx.config, ctx.report
    if cfg.bootstrap <= 0 or not ctx.outcomes:
        return []
    kept = {key[2] for key in ctx.outcomes}
    names = order if order is not None else [v.name for v in ctx.views]
    models = [name for name in names if name in kept]  # in the order the models were given
    pairs = ([tuple(p) for p in cfg.compare] if cfg.compare is not None
             else default_pairs(models, report.references, report.subject))
    wanted = {m for pair in pairs for m in pair}
    items = {key: it for key, it in ctx.outcomes.items() if key[2] in wanted}
    if not pairs or not items:
        return []
    catalogs = sorted({ctx.groups[i] for i in ctx.rows("test")})
    observed, resampled, _ = statistics(items, catalogs, resamples=cfg.bootstrap,
                                        seed=cfg.bootstrap_seed)
    # cells in the order of the report's rows (the jobs keep their outcomes from several threads)
    first = {}
    for i, row in enumerate(report.rows):
        first.setdefault((row.task, row.modality, row.metric), i)
    cells = sorted(dict.fromkeys((task, modality, metric) for task, modality, _, metric in items),
                   key=lambda cell: first.get(cell, len(first)))
    out = []
    for task, modality, metric in cells:
        for model, reference in pairs:
            a, b = (task, modality, model, metric), (task, modality, reference, metric)
            if a not in items or b not in items:
                continue
            if not np.array_equal(items[a].groups, items[b].groups):  # never paired: say so
                ctx.log(f"bootstrap: {task}/{modality}/{metric}: {model} and {reference} were "
                        "measured on different items; no interval")
                continue
            low, high = interval(resampled[a] - resampled[b], cfg.confidence)
            out.append(Comparison(task, modality, model, reference, metric,
                                  observed[a] - observed[b], low, high, verdict_of(low, high)))
    report.comparisons.extend(out)
    report.meta["bootstrap"] = {"resamples": cfg.bootstrap, "seed": cfg.bootstrap_seed,
                                "confidence": cfg.confidence, "unit": "test catalog",
                                "catalogs": len(catalogs), "pairs": [list(p) for p in pairs]}
    return out
