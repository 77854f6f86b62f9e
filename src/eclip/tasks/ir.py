"""The standard retrieval tasks, scored as ranx scores them, and the files other tools read.

Tasks on the test split (each a report modality of the task ``retrieval``, named by its direction):

- ``text->image`` (``text2image``): each listing's title queries the listings' images; relevant: every
  listing of its catalog, itself included (the hit rule of the training logs' recall);
- ``image->image`` / ``text->text`` (``image2image`` / ``text2text``): a listing's image (title)
  queries the others' images (titles); relevant: the other listings of its catalog; the query
  listing is left out of its own ranking, and a listing whose catalog has no other test listing is no
  query;
- ``category->image`` (``category2image``): a category path (the zero-shot prompts: the path and the
  leaf, averaged) queries the images; relevant: every listing of that category;
- ``query->image`` (``query2image``): search queries given as ``{query: {product_id: relevance}}``
  (``eval.queries``; a benchmark preset writes one, see ``eclip.catalog.presets``).

Every model's joint-space vectors are ranked by dot product (numpy, query blocks, so that 20k test
listings fit in memory), the top ``depth`` of each query make the run, and ``scores_from_gains``
computes `ranx <https://github.com/AmenRa/ranx>`_'s definitions in numpy (ranx itself compiles
with numba on first use in each process, 13-17 s; tests/test_ir.py pins the two equal): mAP@depth, MRR@depth, nDCG@10, R@1, R@10 and
P@10 (R@k is IR recall: the share of a query's relevant items in its top k; nDCG with the query's
relevance grades, binary here). The TF-IDF reference joins ``text->text``.

Files (``write_files``): ``retrieval/<task>/qrels.json`` (query id -> {doc id: relevance}, BEIR's
shape), ``retrieval/<task>/queries.jsonl`` (``{"_id", "text"}`` or ``{"_id", "image"}``) and
``retrieval/<task>/<model>/run.json`` (query id -> {doc id: score}, the run that was scored, scores
rounded to 6 decimals before scoring), so ``ranx.evaluate(Qrels.from_file(...),
Run.from_file(...), ...)`` gives the report's numbers; and ``clip_benchmark.jsonl``: one
CLIP_benchmark-style record per model, ``{"dataset", "model", "pretrained", "task": "retrieval",
"metrics": {"text2image_nDCG@10": ..., ...}}``. Doc ids are product ids; query ids are product ids,
category paths or the query texts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from eclip.atomic import atomic_open, write_json_atomic
from eclip.catalog.schema import Listing
from eclip.errors import ConfigError

TASK = "retrieval"
HEADLINE = "nDCG@10"
DEFAULT_DEPTH = 1000
SCORE_DECIMALS = 6
QUERY_BLOCK = 2048  # queries ranked, written and scored together (bounds the run held in memory)
DIRECTIONS = {"text2image": "text->image", "image2image": "image->image",
              "text2text": "text->text", "category2image": "category->image",
              "query2image": "query->image"}


def metric_names(depth: int = DEFAULT_DEPTH) -> dict[str, str]:
    """The report's metric names -> ranx's."""
    if not isinstance(depth, int) or depth < 10:
        raise ConfigError(f"eval.retrieval_depth must be an integer >= 10, got {depth!r}")
    return {f"mAP@{depth}": f"map@{depth}", f"MRR@{depth}": f"mrr@{depth}", "nDCG@10": "ndcg@10",
            "R@1": "recall@1", "R@10": "recall@10", "P@10": "precision@10"}


# ------------------------------------------------------------------------------------ scoring


def _parse_metric(name: str) -> tuple[str, int]:
    kind, _, k = name.partition("@")
    if kind not in ("map", "mrr", "ndcg", "recall", "precision") or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"unknown retrieval metric {name!r} (map, mrr, ndcg, recall, precision "
                          "@k with k >= 1)")
    return kind, int(k)


def scores_from_gains(gains: np.ndarray, relevant: Sequence[np.ndarray],
                      metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-query metric values (``{metric: values [n]}``) from ``gains [n, L]``: the relevance of
    each query's ranked documents, best first (0 for a non-relevant document or past the end of a
    short ranking), and ``relevant[i]``: the grades (>= 1) of all of query ``i``'s relevant
    documents, retrieved or not. ranx's definitions (relevant: grade >= 1): AP@k = the sum of the
    precisions at the hits in the top k / the number of relevant documents; RR@k = 1 / the rank of
    the first hit in the top k; nDCG@k = DCG@k / ideal DCG@k with gain = the grade and discount
    log2(rank + 1) (Jarvelin); R@k = hits in the top k / relevant; P@k = hits in the top k / k;
    a query with no relevant document scores 0. Pinned equal to ranx by tests/test_ir.py."""
    gains = np.asarray(gains, dtype=np.float64)
    n = gains.shape[0]
    want = {m: _parse_metric(m) for m in metrics}
    depth = max([k for _, k in want.values()], default=0)
    if gains.shape[1] < depth:  # a short ranking: pad with non-relevant documents
        gains = np.pad(gains, ((0, 0), (0, depth - gains.shape[1])))
    n_rel = np.array([len(r) for r in relevant], dtype=np.float64)
    has = n_rel > 0
    safe = np.where(has, n_rel, 1.0)
    hit = gains[:, :depth] > 0
    cum = np.cumsum(hit, axis=1)
    ranks = np.arange(1, depth + 1)
    discount = 1.0 / np.log2(ranks + 1.0)
    out: dict[str, np.ndarray] = {}
    for name, (kind, k) in want.items():
        h = hit[:, :k]
        if kind == "map":
            value = (h * cum[:, :k] / ranks[:k]).sum(axis=1) / safe
        elif kind == "mrr":
            first = h.argmax(axis=1)
            value = np.where(h.any(axis=1), 1.0 / (first + 1.0), 0.0)
        elif kind == "ndcg":
            dcg = (gains[:, :k] * discount[:k]).sum(axis=1)
            ideal = np.zeros((n, k))
            for i, grades in enumerate(relevant):
                best = np.sort(np.asarray(grades, dtype=np.float64))[::-1][:k]
                ideal[i, :len(best)] = best
            idcg = (ideal * discount[:k]).sum(axis=1)
            value = dcg / np.where(idcg > 0, idcg, 1.0)
        elif kind == "recall":
            value = cum[:, k - 1] / safe if k else np.zeros(n)
        else:
            value = cum[:, k - 1] / k
        out[name] = np.where(has, value, 0.0)
    return out


def ir_scores(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]],
              metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-query values of ``metrics`` (ranx's names: ``map@k``, ``mrr@k``, ``ndcg@k``,
    ``recall@k``, ``precision@k``) of a run: ``{metric: {query id: value}}``, for the queries of
    ``qrels`` (one missing from ``run`` scores 0; queries of ``run`` outside ``qrels`` are dropped,
    as ranx's ``make_comparable``). Each query's documents are ranked by score, best first, ties in
    the run's order (ranx leaves the order of ties to its sort). numpy, no numba compile: equal to
    ``ranx.evaluate`` (pinned by tests/test_ir.py)."""
    if not qrels:
        return {m: {} for m in metrics}
    depth = max(_parse_metric(m)[1] for m in metrics) if metrics else 0
    queries = list(qrels)
    gains = np.zeros((len(queries), depth))
    relevant = []
    for i, q in enumerate(queries):
        grades = qrels[q]
        relevant.append(np.array([r for r in grades.values() if r >= 1], dtype=np.float64))
        ranked = sorted((run.get(q) or {}).items(), key=lambda kv: -kv[1])[:depth]
        gains[i, :len(ranked)] = [g if (g := grades.get(d, 0)) >= 1 else 0 for d, _ in ranked]
    values = scores_from_gains(gains, relevant, metrics)
    return {m: dict(zip(queries, v.tolist())) for m, v in values.items()}


def evaluate_run(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]],
                 depth: int = DEFAULT_DEPTH) -> dict[str, float]:
    """The report's metrics of a run (means over the queries of ``qrels``), as ranx computes them."""
    names = metric_names(depth)
    per_query = ir_scores(qrels, run, list(names.values()))
    return {ours: float(np.mean([per_query[theirs].get(q, 0.0) for q in qrels])) if qrels else 0.0
            for ours, theirs in names.items()}


def top_k(query: np.ndarray | sp.spmatrix, gallery: np.ndarray | sp.spmatrix, k: int, *,
          exclude: np.ndarray | None = None,
          chunk: int = 1024) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, indices [n, k'], scores [n, k'])`` per block of query rows: the gallery rows with
    the highest dot products, best first (ties by gallery row); ``exclude[i]`` (>= 0) is a gallery row
    that query ``i`` never returns (the query's own listing). ``k' = min(k, gallery rows left)``."""
    n_gallery = gallery.shape[0]
    kk = min(k, n_gallery - (1 if exclude is not None else 0))
    for start in range(0, query.shape[0], chunk):
        sims = query[start:start + chunk] @ gallery.T
        sims = np.asarray(sims.toarray() if sp.issparse(sims) else sims, dtype=np.float64)
        if exclude is not None:
            rows = np.flatnonzero(exclude[start:start + chunk] >= 0)
            sims[rows, exclude[start:start + chunk][rows]] = -np.inf
        if kk <= 0:
            yield start, np.zeros((len(sims), 0), np.int64), np.zeros((len(sims), 0))
            continue
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < n_gallery else \
            np.tile(np.arange(n_gallery), (len(sims), 1))
        scores = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((top, -scores), axis=1)
        yield start, np.take_along_axis(top, order, axis=1), np.take_along_axis(scores, order, axis=1)


# -------------------------------------------------------------------------------------- tasks


@dataclass
class RetrievalTask:
    """One retrieval task on a gallery of listings (its doc ids): the queries and what is relevant."""

    name: str  # file name: text2image, ...
    query_ids: list[str]
    qrels: dict[str, dict[str, int]]
    queries: list[dict]  # BEIR queries.jsonl rows: {"_id", "text"} or {"_id", "image"}
    query_rows: np.ndarray | None = None  # listing queries: their gallery rows
    exclude_self: bool = False
    groups: list[str] | None = None  # listing queries: each query's catalog (bootstrap unit)
    texts: list[str] | None = None  # text queries: what is encoded

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.name]


def listing_tasks(gallery: list[Listing]) -> list[RetrievalTask]:
    """text->image, image->image and text->text over ``gallery`` (same catalog is relevant)."""
    ids = [x.product_id for x in gallery]
    groups = [x.group_id for x in gallery]
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    rows = np.arange(len(gallery))
    t2i = RetrievalTask("text2image", list(ids),
                        {ids[i]: {ids[j]: 1 for j in members[groups[i]]} for i in rows},
                        [{"_id": ids[i], "text": gallery[i].title} for i in rows], rows,
                        groups=list(groups))
    out = [t2i]
    within = np.array([i for i in rows if len(members[groups[i]]) > 1], dtype=np.int64)
    qrels = {ids[i]: {ids[j]: 1 for j in members[groups[i]] if j != i} for i in within}
    for name, query_of in (("image2image", lambda x: {"image": x.images[0]}),
                           ("text2text", lambda x: {"text": x.title})):
        if len(within):
            out.append(RetrievalTask(name, [ids[i] for i in within], qrels,
                                     [{"_id": ids[i], **query_of(gallery[i])} for i in within],
                                     within, exclude_self=True,
                                     groups=[groups[i] for i in within]))
    return out


def category_task(gallery: list[Listing]) -> RetrievalTask | None:
    """category->image: every category of the gallery as a query, its listings relevant."""
    qrels: dict[str, dict[str, int]] = {}
    for x in gallery:
        if x.category:
            qrels.setdefault(x.category, {})[x.product_id] = 1
    if not qrels:
        return None
    names = sorted(qrels)
    return RetrievalTask("category2image", names, {c: qrels[c] for c in names},
                         [{"_id": c, "text": c} for c in names], texts=names)


def load_queries(path: str | Path) -> dict[str, dict[str, int]]:
    """``{query: {product_id: relevance}}`` from a JSON file (what ``presets`` writes)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"eval.queries: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"eval.queries: {path} must hold {{query: {{product_id: relevance}}}}")
    return {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in data.items()}


def query_task(queries: dict[str, dict[str, int]], gallery: list[Listing]) -> RetrievalTask | None:
    """query->image: the given queries, with their relevant items restricted to the gallery (rows
    the catalog reader skipped are gone); queries left with no relevant item are dropped."""
    present = {x.product_id for x in gallery}
    qrels = {}
    for q, docs in queries.items():
        kept = {d: r for d, r in docs.items() if d in present and r > 0}
        if kept:
            qrels[q] = kept
    if not qrels:
        return None
    names = list(qrels)
    return RetrievalTask("query2image", names, qrels, [{"_id": q, "text": q} for q in names],
                         texts=names)


# ------------------------------------------------------------------------------------ ranking


@dataclass
class RetrievalResult:
    metrics: dict[str, float]  # report name -> mean over the queries
    per_query: dict[str, np.ndarray]  # report name -> value per query, in ``task.query_ids`` order


def rank_and_score(task: RetrievalTask, query: np.ndarray | sp.spmatrix,
                   gallery: np.ndarray | sp.spmatrix, doc_ids: Sequence[str], *,
                   depth: int = DEFAULT_DEPTH, run_path: str | Path | None = None,
                   block: int = QUERY_BLOCK) -> RetrievalResult:
    """Rank ``gallery`` for every query vector (rows of ``query``, in ``task.query_ids`` order),
    keep the top ``depth``, score them (``scores_from_gains``: ranx's metrics in numpy); with
    ``run_path`` the run is written there as JSON (streamed block by block)."""
    names = metric_names(depth)
    doc_ids = list(doc_ids)
    row_of = {d: j for j, d in enumerate(doc_ids)}
    exclude = np.asarray(task.query_rows) if task.exclude_self else None
    per_query = {m: np.zeros(len(task.query_ids)) for m in names}
    with (atomic_open(run_path, "w") if run_path is not None else _nothing()) as handle:
        if handle is not None:
            handle.write("{")
        first = True
        for b0 in range(0, len(task.query_ids), block):
            ids = task.query_ids[b0:b0 + block]
            ex = exclude[b0:b0 + block] if exclude is not None else None
            gains = np.zeros((len(ids), depth))
            relevant = []
            for start, top, scores in top_k(query[b0:b0 + block], gallery, depth, exclude=ex):
                # the run as written: scores rounded, ranked by them (ties by gallery row)
                scores = np.round(scores, SCORE_DECIMALS)
                order = np.lexsort((top, -scores), axis=1)
                top = np.take_along_axis(top, order, axis=1)
                scores = np.take_along_axis(scores, order, axis=1)
                for r in range(len(top)):
                    q = ids[start + r]
                    rel = {row_of[d]: g for d, g in task.qrels.get(q, {}).items()
                           if g >= 1 and d in row_of}
                    relevant.append(np.array([g for g in task.qrels.get(q, {}).values() if g >= 1],
                                             dtype=np.float64))
                    if rel:
                        rows = np.fromiter(rel, np.int64, len(rel))
                        grades = np.fromiter(rel.values(), np.float64, len(rel))
                        sort = np.argsort(rows)
                        rows, grades = rows[sort], grades[sort]
                        at = np.minimum(np.searchsorted(rows, top[r]), len(rows) - 1)
                        gains[start + r, :top.shape[1]] = np.where(rows[at] == top[r], grades[at], 0)
                    if handle is not None:
                        handle.write(("" if first else ",\n") + json.dumps(q, ensure_ascii=False)
                                     + ": " + json.dumps(dict(zip([doc_ids[j] for j in top[r]],
                                                                  scores[r].tolist())),
                                                         ensure_ascii=False))
                        first = False
            values = scores_from_gains(gains, relevant, list(names.values()))
            for ours, theirs in names.items():
                per_query[ours][b0:b0 + len(ids)] = values[theirs]
        if handle is not None:
            handle.write("}\n")
    return RetrievalResult({m: float(v.mean()) if len(v) else 0.0 for m, v in per_query.items()},
                           per_query)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# -------------------------------------------------------------------------------------- files


def safe_name(name: str) -> str:
    """A model name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def write_task_files(task: RetrievalTask, folder: str | Path) -> None:
    """``qrels.json`` and ``queries.jsonl`` of a task (once per task, whatever the models)."""
    folder = Path(folder)
    write_json_atomic(folder / "qrels.json", task.qrels, indent=None)
    with atomic_open(folder / "queries.jsonl", "w") as handle:
        for row in task.queries:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def clip_benchmark_records(rows, dataset: str, pretrained: dict[str, str] | None = None
                           ) -> list[dict]:
    """One CLIP_benchmark-style record per model from the report's retrieval rows (``Row``s):
    ``{"dataset", "model", "pretrained", "task": "retrieval", "metrics": {"<task>_<metric>": v}}``."""
    by_direction = {v: k for k, v in DIRECTIONS.items()}
    records: dict[str, dict] = {}
    for row in rows:
        if row.task != TASK or row.modality not in by_direction:
            continue
        record = records.setdefault(row.model, {
            "dataset": dataset, "model": row.model,
            "pretrained": (pretrained or {}).get(row.model), "task": TASK, "metrics": {}})
        record["metrics"][f"{by_direction[row.modality]}_{row.metric}"] = row.value
    return list(records.values())


def write_clip_benchmark(rows, path: str | Path, dataset: str,
                         pretrained: dict[str, str] | None = None) -> Path | None:
    """``path`` (JSON lines): the records of ``clip_benchmark_records``; None when there are none."""
    records = clip_benchmark_records(rows, dataset, pretrained)
    if not records:
        return None
    with atomic_open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)


# ---------------------------------------------------------------------------------- the suite


def title_query_encoder(model, *, batch_size: int = 128) -> Callable[[list[str]], np.ndarray]:
    """Texts -> joint space, each rendered as a listing with only that title by the model's title
    composer: the treatment of the titles of ``text->image``, so queries and titles compare."""
    from eclip.encode import embed_texts, title_composer
    from eclip.encode.text import query_listing

    composer = title_composer(model)
    return lambda texts: embed_texts(model, [composer.compose(query_listing(t)) for t in texts],
                                     batch_size=batch_size)


def run_retrieval(ctx, *, query_encoders: dict[str, Callable] | None = None,
                  out_dir: str | Path | None = None) -> dict[str, RetrievalTask]:
    """Every retrieval task on test, for every model of ``ctx.views`` (their joint space; the
    TF-IDF reference in ``text->text``): report rows under task ``retrieval``, modality the
    direction; per-query outcomes of the listing-query tasks kept for the catalog bootstrap; with
    ``out_dir`` and ``eval.retrieval_files``, the files under ``out_dir/retrieval``. Returns the
    tasks that ran, by name."""
    from eclip.tasks.bootstrap import mean_items
    from eclip.tasks.zeroshot import DEFAULT_TEMPLATES, category_prompts, class_vectors

    cfg = ctx.config
    depth = getattr(cfg, "retrieval_depth", DEFAULT_DEPTH)
    names = metric_names(depth)
    test = ctx.rows("test")
    gallery = [ctx.splits.listings[i] for i in test]
    if len(gallery) < 2:
        return {}
    doc_ids = [x.product_id for x in gallery]
    tasks = listing_tasks(gallery)
    for extra in (category_task(gallery),
                  query_task(load_queries(cfg.queries), gallery)
                  if getattr(cfg, "queries", None) else None):
        if extra is not None:
            tasks.append(extra)
    folder = None
    if out_dir is not None and getattr(cfg, "retrieval_files", True):
        folder = Path(out_dir) / "retrieval"
        for task in tasks:
            write_task_files(task, folder / task.name)
    encoders = query_encoders or {}
    for views in ctx.views:
        for task in tasks:
            vectors = _task_vectors(views, task, test, encoders, category_prompts,
                                    class_vectors, DEFAULT_TEMPLATES)
            if vectors is None:
                continue
            query, image_or_text = vectors
            run_path = (folder / task.name / safe_name(views.name) / "run.json"
                        if folder is not None else None)
            result = rank_and_score(task, query, image_or_text, doc_ids, depth=depth,
                                    run_path=run_path)
            for metric in names:
                ctx.report.add(TASK, task.direction, views.name, metric, result.metrics[metric])
                if task.groups is not None and hasattr(ctx, "keep"):
                    ctx.keep(TASK, (views, task.direction), metric,
                             mean_items(task.groups, result.per_query[metric]))
    return {t.name: t for t in tasks}


def _task_vectors(views, task: RetrievalTask, test: np.ndarray, encoders: dict,
                  category_prompts, class_vectors, templates):
    """(query rows, gallery rows) of ``views`` for ``task``, or None where the model has none."""
    joint = views.joint or {}
    if task.name == "text2text":
        text = joint.get("text")
        if text is None and views.kind == "tfidf":
            text = views.task.get("text")
        if text is None:
            return None
        text = text[test]
        return text[task.query_rows], text
    if "image" not in joint:
        return None
    images = joint["image"][test]
    if task.name == "image2image":
        return images[task.query_rows], images
    if task.name == "text2image":
        if "text" not in joint:
            return None
        return joint["text"][test][task.query_rows], images
    if task.name == "category2image":
        if views.encode_prompts is None:
            return None
        return class_vectors(views.encode_prompts,
                             [category_prompts(c, templates) for c in task.texts]), images
    encode = encoders.get(views.name) or views.encode_prompts
    if encode is None:
        return None
    return encode(list(task.texts)), images
