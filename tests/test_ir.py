"""The standard retrieval tasks (eclip.tasks.ir): the metrics against hand-computed values and ranx, the ranking,
the qrels / run / CLIP_benchmark files read back with ranx, and a benchmark in Marqo's layout
(eclip.catalog.presets) through ``eclip eval``."""

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from eclip.catalog.presets import prepare_benchmark
from eclip.catalog.schema import Listing
from eclip.cli import main
from eclip.errors import CatalogError, ConfigError
from eclip.tasks import ir
from eclip.tasks.context import EvalConfig, TaskContext
from eclip.tasks.data import eval_splits
from eclip.tasks.report import Report
from eclip.tasks.views import ModelViews

# Three queries, hand-ranked:
#   q1: relevant {a, b}; ranking a c b d  -> AP (1 + 2/3)/2 = 5/6, RR 1,
#       nDCG@10 (1 + 1/log2 4) / (1 + 1/log2 3), R@1 1/2, R@10 1, P@10 2/10
#   q2: relevant {c};    ranking a b c    -> AP 1/3, RR 1/3, nDCG@10 1/log2 4 = 1/2, R@1 0, R@10 1,
#       P@10 1/10
#   q3: relevant {d, e}; ranking a b c    -> 0 everywhere
QRELS = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"d": 1, "e": 1}}
RUN = {"q1": {"a": 0.9, "c": 0.8, "b": 0.7, "d": 0.1},
       "q2": {"a": 0.5, "b": 0.4, "c": 0.3},
       "q3": {"a": 0.3, "b": 0.2, "c": 0.1}}
HAND = {"mAP@1000": (5 / 6 + 1 / 3) / 3, "MRR@1000": (1 + 1 / 3) / 3,
        "nDCG@10": ((1 + 0.5) / (1 + 1 / math.log2(3)) + 0.5) / 3,
        "R@1": 0.5 / 3, "R@10": 2 / 3, "P@10": 0.3 / 3}


def test_metrics_match_hand_computed_values():
    got = ir.evaluate_run(QRELS, RUN)
    assert got.keys() == HAND.keys()
    for metric, value in HAND.items():
        assert got[metric] == pytest.approx(value, abs=1e-9), metric


def test_numpy_metrics_equal_ranx_on_random_graded_runs():
    """``ir_scores`` (numpy, the report's scorer) == ``ranx.evaluate`` per query: graded qrels,
    short and missing rankings, queries without a relevant document, relevant documents never
    retrieved, run queries outside the qrels, k above a ranking's length. Scores are distinct
    (ranx leaves the order of ties to its sort)."""
    from ranx import Qrels, Run, evaluate

    rng = np.random.default_rng(3)
    docs = [f"d{i}" for i in range(60)]
    qrels, run = {}, {}
    for q in range(40):
        chosen = rng.choice(60, size=rng.integers(1, 8), replace=False)
        qrels[f"q{q}"] = {docs[j]: int(rng.integers(0, 4)) for j in chosen}
        if q % 7 != 3:  # some queries have no ranking
            ranked = rng.choice(60, size=rng.integers(1, 40), replace=False)
            run[f"q{q}"] = {docs[j]: float(s) for j, s in
                            zip(ranked, rng.permutation(len(ranked)) / 100 + 0.001)}
    run["extra"] = {"d0": 0.5}
    metrics = ["map@30", "mrr@30", "ndcg@10", "ndcg@3", "recall@1", "recall@10", "precision@10",
               "precision@50"]
    ours = ir.ir_scores(qrels, run, metrics)
    kept = {q: r for q, r in qrels.items() if any(g >= 1 for g in r.values())}
    ranx_run = Run.from_dict({q: d for q, d in run.items() if q in kept})
    evaluate(Qrels.from_dict(kept), ranx_run, metrics, make_comparable=True)
    for m in metrics:
        for q in qrels:
            theirs = ranx_run.scores[m].get(q, 0.0) if q in kept else 0.0
            assert ours[m][q] == pytest.approx(theirs, abs=1e-12), (m, q)
    assert any(v > 0 for v in ours["ndcg@10"].values())
    assert set(ours["map@30"]) == set(qrels)


def test_metric_names_follow_the_depth_and_reject_a_shallow_one():
    assert list(ir.metric_names(100)) == ["mAP@100", "MRR@100", "nDCG@10", "R@1", "R@10", "P@10"]
    with pytest.raises(ConfigError, match="retrieval_depth"):
        ir.metric_names(5)


def test_top_k_orders_by_score_and_leaves_out_the_query_itself():
    gallery = np.eye(4, dtype=np.float32)
    query = np.array([[0.9, 0.1, 0.5, 0.0], [0.2, 0.8, 0.0, 0.3]], dtype=np.float32)
    [(start, top, scores)] = list(ir.top_k(query, gallery, 3))
    assert start == 0 and top.tolist() == [[0, 2, 1], [1, 3, 0]]
    assert scores[0].tolist() == pytest.approx([0.9, 0.5, 0.1])
    [(_, top, _)] = list(ir.top_k(query, gallery, 10, exclude=np.array([0, 1])))
    assert top.tolist() == [[2, 1, 3], [3, 0, 2]]  # all but itself (ties by gallery row)


def _listing(pid, group, category, image="x.jpg"):
    return Listing(product_id=pid, title=f"title {pid}", images=[image], catalog_id=group,
                   category=category, split="test")


def test_tasks_build_qrels_from_catalogs_and_categories():
    gallery = [_listing("a", "g1", "A > x"), _listing("b", "g1", "A > x"),
               _listing("c", "g2", "B > y"), _listing("d", None, "A > x")]
    tasks = {t.name: t for t in ir.listing_tasks(gallery)}
    assert tasks["text2image"].qrels["a"] == {"a": 1, "b": 1}
    assert tasks["text2image"].qrels["d"] == {"d": 1}
    for name in ("image2image", "text2text"):  # only listings with another of their catalog
        assert tasks[name].query_ids == ["a", "b"] and tasks[name].exclude_self
        assert tasks[name].qrels == {"a": {"b": 1}, "b": {"a": 1}}
    category = ir.category_task(gallery)
    assert category.qrels == {"A > x": {"a": 1, "b": 1, "d": 1}, "B > y": {"c": 1}}
    queries = ir.query_task({"red shoe": {"a": 1, "zz": 1}, "nothing": {"zz": 1}}, gallery)
    assert queries.qrels == {"red shoe": {"a": 1}}  # unknown items and empty queries dropped


def _oracle_suite(tmp_path, queries=None):
    """Six test listings in three catalogs of two categories; an oracle whose vectors are the
    catalog (one-hot), and a noise model."""
    rng = np.random.default_rng(0)
    groups = ["g0", "g0", "g1", "g1", "g2", "g2"]
    cats = ["A > x", "A > x", "A > x", "A > x", "B > y", "B > y"]
    listings = [_listing(f"p{i}", g, c) for i, (g, c) in enumerate(zip(groups, cats))]
    onehot = np.eye(3, dtype=np.float32)[[int(g[1]) for g in groups]]
    noise = rng.normal(size=(6, 3)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    prompt = {"A > x": [1, 1, 0], "B > y": [0, 0, 1]}

    def encode(texts):  # prompts "A > x" / "x", "B > y" / "y" and the query "red g0"
        rows = [prompt.get(t) or prompt.get({"x": "A > x", "y": "B > y"}.get(t, ""))
                or [1, 0, 0] for t in texts]
        v = np.asarray(rows, dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    views = [ModelViews("oracle", "joint", {}, {"image": onehot, "text": onehot},
                        encode_prompts=encode),
             ModelViews("noise", "joint", {}, {"image": noise, "text": noise[::-1].copy()},
                        encode_prompts=encode)]
    cfg = EvalConfig(retrieval_depth=10, queries=queries)
    ctx = TaskContext(eval_splits(listings), views, cfg, Report())
    tasks = ir.run_retrieval(ctx, out_dir=tmp_path)
    return ctx, tasks


def test_oracle_retrieval_is_perfect_and_files_read_back_with_ranx(tmp_path):
    from ranx import Qrels, Run, evaluate

    queries = tmp_path / "queries.json"
    queries.write_text(json.dumps({"red g0": {"p0": 1, "p1": 1}}))
    ctx, tasks = _oracle_suite(tmp_path / "out", queries=str(queries))
    report = ctx.report
    assert set(tasks) == {"text2image", "image2image", "text2text", "category2image",
                          "query2image"}
    directions = set(report.modalities("retrieval"))
    assert directions == {"text->image", "image->image", "text->text", "category->image",
                          "query->image"}
    for direction in directions:
        for metric in ("mAP@10", "MRR@10", "nDCG@10", "R@10"):
            assert report.value("retrieval", direction, "oracle", metric) == pytest.approx(1.0)
    # P@10 with 2 relevant among 6: 0.2; category A has 4 relevant listings
    assert report.value("retrieval", "text->image", "oracle", "P@10") == pytest.approx(0.2)
    assert report.value("retrieval", "image->image", "oracle", "R@1") == pytest.approx(1.0)
    assert report.value("retrieval", "text->image", "oracle", "R@1") == pytest.approx(0.5)
    # per-query outcomes of listing queries, by catalog, for the bootstrap
    kept = ctx.outcomes[("retrieval", "text->image", "oracle", "nDCG@10")]
    assert kept.kind == "mean" and list(kept.groups) == ["g0", "g0", "g1", "g1", "g2", "g2"]

    root = tmp_path / "out" / "retrieval"
    for name, task in tasks.items():
        qrels = Qrels.from_file(str(root / name / "qrels.json"))
        assert json.loads((root / name / "qrels.json").read_text()) == task.qrels
        lines = (root / name / "queries.jsonl").read_text().splitlines()
        assert [json.loads(x)["_id"] for x in lines] == task.query_ids
        for model in ("oracle", "noise"):
            run_file = root / name / model / "run.json"
            run = json.loads(run_file.read_text())
            if name in ("image2image", "text2text"):
                assert all(q not in docs for q, docs in run.items())  # itself left out
            names = ir.metric_names(10)
            got = evaluate(qrels, Run.from_file(str(run_file)), list(names.values()),
                           make_comparable=True)
            for ours, theirs in names.items():
                assert got[theirs] == pytest.approx(
                    report.value("retrieval", task.direction, model, ours), abs=1e-12), \
                    (name, model, ours)

    records_path = tmp_path / "clip_benchmark.jsonl"
    ir.write_clip_benchmark(report.rows, records_path, "toy", {"oracle": "/models/oracle"})
    records = [json.loads(x) for x in records_path.read_text().splitlines()]
    assert [r["model"] for r in records] == ["oracle", "noise"]
    assert set(records[0]) == {"dataset", "model", "pretrained", "task", "metrics"}
    assert records[0]["dataset"] == "toy" and records[0]["pretrained"] == "/models/oracle"
    assert records[0]["metrics"]["text2image_nDCG@10"] == pytest.approx(1.0)
    assert len(records[0]["metrics"]) == 5 * 6


def test_blocks_of_queries_give_the_same_metrics(tmp_path):
    rng = np.random.default_rng(1)
    gallery = [_listing(f"p{i}", f"g{i // 3}", "A > x") for i in range(30)]
    task = {t.name: t for t in ir.listing_tasks(gallery)}["image2image"]
    vectors = rng.normal(size=(30, 8))
    ids = [x.product_id for x in gallery]
    whole = ir.rank_and_score(task, vectors[task.query_rows], vectors, ids, depth=10,
                              run_path=tmp_path / "run.json")
    blocks = ir.rank_and_score(task, vectors[task.query_rows], vectors, ids, depth=10, block=7)
    assert whole.metrics == pytest.approx(blocks.metrics)
    run = json.loads((tmp_path / "run.json").read_text())
    assert list(run) == task.query_ids and all(len(d) == 10 for d in run.values())


# ------------------------------------------------------------------------- Marqo's layout


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def _marqo_rows():
    """12 items, 4 queries of 3 items each, item i7 listed under two queries (two rows)."""
    rows = []
    for q in range(4):
        items = [3 * q, 3 * q + 1, 3 * q + 2] + ([7] if q == 0 else [])
        for position, i in enumerate(items, start=1):
            rows.append({"item_ID": f"i{i}", "query": f"gadget family {q}",
                         "title": f"gadget {i} of family {i // 3}", "position": position,
                         "colour": ((i * 37) % 255, (i * 91) % 255, (i * 53) % 255)})
    return rows


@pytest.fixture
def marqo_parquet(tmp_path):
    """Marqo's layout in Parquet, images as the {bytes, path} struct of a datasets Image column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _marqo_rows()
    table = pa.table({
        "image": [{"bytes": _png(r["colour"]), "path": None} for r in rows],
        "item_ID": [r["item_ID"] for r in rows], "query": [r["query"] for r in rows],
        "title": [r["title"] for r in rows], "position": [r["position"] for r in rows]})
    path = tmp_path / "google_shopping.parquet"
    pq.write_table(table, path)
    return path


def test_preset_converts_rows_of_query_item_pairs(marqo_parquet, tmp_path):
    out = tmp_path / "bench"
    bench = prepare_benchmark(marqo_parquet, "gs-marqo", out, log=lambda m: None)
    assert (bench.rows, bench.items, bench.n_queries) == (13, 12, 4)
    assert bench.image_root == out and bench.dataset == "gs-marqo:google_shopping"
    listings = [json.loads(x) for x in bench.catalog.read_text().splitlines()]
    assert [x["product_id"] for x in listings] == ["i0", "i1", "i2", "i7", "i3", "i4", "i5",
                                                   "i6", "i8", "i9", "i10", "i11"]  # first rows
    assert all(x["split"] == "test" and (out / x["images"][0]).is_file() for x in listings)
    queries = json.loads(bench.queries.read_text())
    assert queries["gadget family 0"] == {"i0": 1, "i1": 1, "i2": 1, "i7": 1}
    assert queries["gadget family 2"] == {"i6": 1, "i7": 1, "i8": 1}


def test_preset_reads_image_paths_from_a_csv(tmp_path, write_csv):
    pics = tmp_path / "pics"
    pics.mkdir()
    rows = []
    for r in _marqo_rows():
        Image.new("RGB", (32, 32), r["colour"]).save(pics / f"{r['item_ID']}.png")
        rows.append({"item_ID": r["item_ID"], "query": r["query"], "title": r["title"],
                     "image": f"pics/{r['item_ID']}.png", "position": r["position"]})
    path = tmp_path / "amazon.csv"
    write_csv(path, rows)
    bench = prepare_benchmark(path, "amazon-marqo", tmp_path / "bench", log=lambda m: None)
    assert bench.image_root == tmp_path and bench.items == 12
    first = json.loads(bench.catalog.read_text().splitlines()[0])
    assert first["images"] == ["pics/i0.png"]


def test_unknown_preset_is_a_config_error(marqo_parquet, tmp_path):
    with pytest.raises(ConfigError, match="gs-marqo"):
        prepare_benchmark(marqo_parquet, "nope", tmp_path / "b")


def test_preset_names_file_and_line_of_a_malformed_json_line(tmp_path):
    """The preset reads through the catalog's hardened readers: a broken line is a CatalogError
    naming the file and the line, not a traceback from json."""
    path = tmp_path / "bench.jsonl"
    good = {"item_ID": "a", "query": "q", "title": "t", "image": "a.png", "position": 1}
    path.write_text(json.dumps(good) + "\n\n" + '{"item_ID": "b", "title": \n')
    with pytest.raises(CatalogError, match="malformed JSON") as caught:
        prepare_benchmark(path, "gs-marqo", tmp_path / "out", log=lambda m: None)
    assert caught.value.file == str(path) and caught.value.line == 3


def test_preset_rejects_a_title_that_is_not_text(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps({"item_ID": 7.0, "query": "q", "title": {"x": 1}, "image": "a.png"})
                    + "\n")
    with pytest.raises(CatalogError, match="not text") as caught:
        prepare_benchmark(path, "gs-marqo", tmp_path / "out", log=lambda m: None)
    assert (caught.value.row, caught.value.field) == (1, "title")


@pytest.mark.e2e
def test_eval_cli_runs_a_marqo_layout_through_the_preset(marqo_parquet, tiny_model_dir, tmp_path,
                                                         capsys):
    from ranx import Qrels, Run, evaluate

    out = tmp_path / "eval"
    code = main(["eval", "--models", f"eclip={tiny_model_dir}", f"clip={tiny_model_dir}",
                 "--catalog", str(marqo_parquet), "--out", str(out), "--quiet",
                 "eval.preset=gs-marqo", "eval.plots=false", "eval.retrieval_depth=10"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads((out / "report.json").read_text())
    retrieval = {(r["modality"], r["model"], r["metric"]): r["value"] for r in data["rows"]
                 if r["task"] == "retrieval"}
    assert {m for m, _, _ in retrieval} == {"query->image", "text->image"}
    assert {k for _, _, k in retrieval} == {"mAP@10", "MRR@10", "nDCG@10", "R@1", "R@10", "P@10"}
    assert data["meta"]["dataset"] == "gs-marqo:google_shopping"
    assert data["meta"]["splits"]["test"] == 12
    root = out / "retrieval" / "query2image"
    assert len(json.loads((root / "qrels.json").read_text())) == 4
    got = evaluate(Qrels.from_file(str(root / "qrels.json")),
                   Run.from_file(str(root / "eclip" / "run.json")), ["ndcg@10", "map@10"],
                   make_comparable=True)
    assert got["ndcg@10"] == pytest.approx(retrieval[("query->image", "eclip", "nDCG@10")])
    assert got["map@10"] == pytest.approx(retrieval[("query->image", "eclip", "mAP@10")])
    records = [json.loads(x) for x in (out / "clip_benchmark.jsonl").read_text().splitlines()]
    assert {r["model"] for r in records} == {"eclip", "clip"}
    assert records[0]["dataset"] == "gs-marqo:google_shopping"
    assert records[0]["pretrained"] == str(tiny_model_dir)
    assert set(records[0]["metrics"]) == {f"{t}_{m}" for t in ("query2image", "text2image")
                                          for m in ("mAP@10", "MRR@10", "nDCG@10", "R@1",
                                                    "R@10", "P@10")}
