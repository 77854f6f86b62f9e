"""Retrieval quality measured through the HTTP API, the way a client sees it.

Each query listing (typically the test split: catalogs never seen in training) is searched by its
title (``POST /search/text``) and by its first photo (``POST /search/image``). The query listing
itself is left out of the results scored: an index that holds it would answer with its own title
or photo, which measures memory, not generalisation. Two hit rules, on the results without it:

* ``R@k``: a result of the query's product (another listing of its catalog), over all queries;
* ``R@k others``: the same, over the queries whose catalog has another listing in the index (the
  only ones that can hit: product matching).

``classify_through_api`` scores ``POST /classify`` (category top-1/top-5 accuracy, adult AUC) from
the title, the photo and both, with the query listing left out of the neighbour vote (``exclude``).
The adult head was fitted on the index's listings, so for an unbiased adult AUC the index must not
hold the queries (``eclip index --split train``).

``client`` is anything with httpx's ``post`` (an ``httpx.Client`` on a server's URL, or FastAPI's
``TestClient``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eclip.catalog.schema import Listing, group_key


@dataclass
class ApiRecall:
    mode: str  # "text" or "image"
    against: str
    k: int
    queries: int
    recall: float
    others_queries: int
    recall_others: float
    errors: int
    p50_ms: float

    def row(self) -> str:
        return (f"| {self.mode} | {self.against} | {self.queries} | {self.recall:.3f} | "
                f"{self.others_queries} | {self.recall_others:.3f} | {self.errors} | "
                f"{self.p50_ms:.1f} |")


TABLE_HEAD = ("| query | against | queries | R@{k} | queries with another listing | R@{k} others "
              "| errors | p50 ms |\n|---|---|---|---|---|---|---|---|")


def _group(result: dict) -> str:
    return group_key(result["catalog_id"], result["product_id"])


def recall_through_api(client, queries: list[Listing], indexed: list[Listing], *, k: int = 10,
                       modes: tuple[tuple[str, str], ...] = (("text", "text"), ("image", "image")),
                       text_search: str = "vector") -> list[ApiRecall]:
    """R@k through the API for each ``(mode, against)``; ``indexed`` are the index's listings. The
    query listing itself is dropped from the results before they are scored. ``text_search`` is
    the ``mode`` of the text queries ("vector", "lexical" or "hybrid", ``search/hybrid.py``)."""
    sizes = Counter(x.group_id for x in indexed)
    indexed_ids = {x.product_id for x in indexed}
    report = []
    for mode, against in modes:
        hits, others_hits, others_n, errors, times = 0, 0, 0, 0, []
        for listing in queries:
            start = time.perf_counter()
            if mode == "text":
                response = client.post("/search/text", json={"query": listing.title, "k": k + 1,
                                                              "against": against,
                                                              "mode": text_search})
            else:
                photo = Path(listing.images[0])
                response = client.post("/search/image", data={"k": str(k + 1), "against": against},
                                       files={"file": (photo.name, photo.read_bytes())})
            times.append(time.perf_counter() - start)
            if response.status_code != 200:
                errors += 1
                continue
            others = [r for r in response.json()["results"]
                      if r["product_id"] != listing.product_id][:k]
            hit = any(_group(r) == listing.group_id for r in others)
            hits += hit
            if sizes[listing.group_id] - (listing.product_id in indexed_ids) > 0:
                others_n += 1
                others_hits += hit
        n = max(len(queries), 1)
        report.append(ApiRecall(mode, against, k, len(queries), hits / n, others_n,
                                others_hits / max(others_n, 1), errors,
                                float(np.median(times)) * 1000 if times else 0.0))
    return report


@dataclass
class ApiClassification:
    input: str  # "text", "image" or "both"
    queries: int
    top1: float
    top5: float
    adult_auc: float | None
    errors: int

    def row(self) -> str:
        auc = f"{self.adult_auc:.3f}" if self.adult_auc is not None else "n/a"
        return (f"| {self.input} | {self.queries} | {self.top1:.3f} | {self.top5:.3f} | {auc} | "
                f"{self.errors} |")


CLASSIFY_HEAD = ("| input | queries | category top-1 | category top-5 | adult AUC | errors |\n"
                 "|---|---|---|---|---|---|")


def classify_through_api(client, queries: list[Listing]) -> list[ApiClassification]:
    """Category accuracy and adult AUC of ``POST /classify`` by title, by photo and by both; the
    query listing is left out of the vote where the index holds it."""
    from sklearn.metrics import roc_auc_score

    report = []
    for given in ("text", "image", "both"):
        top1 = top5 = errors = 0
        labels, scores = [], []
        for listing in queries:
            data = {"top": "5", "exclude": listing.product_id}
            if given != "image":
                data["title"] = listing.title
            files = None
            if given != "text":
                photo = Path(listing.images[0])
                files = {"file": (photo.name, photo.read_bytes())}
            response = client.post("/classify", data=data, files=files)
            if response.status_code != 200:
                errors += 1
                continue
            body = response.json()
            predicted = [c["category"] for c in body["categories"]]
            top1 += bool(predicted) and predicted[0] == listing.category
            top5 += listing.category in predicted
            if listing.adult is not None and body["adult_probability"] is not None:
                labels.append(int(listing.adult))
                scores.append(body["adult_probability"])
        auc = float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None
        n = max(len(queries), 1)
        report.append(ApiClassification(given, len(queries), top1 / n, top5 / n, auc, errors))
    return report
