"""The vector stores behind the index: FAISS (default) and Milvus (Milvus Lite in a local file).

Both stores are written from the same listings and vectors; with exact search their top-k ids and
scores are the same for every space and filter. Writes (add / update / delete) keep them equal; a
Milvus write fills a new collection and moves the alias only when the generation is in service.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from eclip.catalog.readers import read_catalog
from eclip.encode import Embeddings, fuse
from eclip.errors import ConfigError
from eclip.search import (SearchIndex, SearchIndexError, VectorSettings, delete_from_index,
                          update_index, write_index)
from eclip.search.store_types import StoreSpec, Where

milvus = pytest.importorskip("eclip.search.milvus")
pytest.importorskip("milvus_lite")

ODD = 'Odd "quoted" \\ back > slash'  # a category that needs escaping in a Milvus expression


@pytest.fixture(scope="module", autouse=True)
def _close_milvus():
    yield
    milvus.close_all()  # the Milvus Lite servers this module started


@pytest.fixture(scope="module")
def listings(tiny_catalog):
    rows = read_catalog(tiny_catalog).listings[:60]
    rows[5] = replace(rows[5], category=ODD)
    rows[6] = replace(rows[6], category=ODD + " > Leaf")
    return rows


def _embeddings(listings, seed=0) -> Embeddings:
    """Random unit vectors (no two scores tie), fused as the index fuses them."""
    rng = np.random.default_rng(seed)

    def unit(n):
        x = rng.standard_normal((n, 16)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    image, text = unit(len(listings)), unit(len(listings))
    return Embeddings([x.product_id for x in listings], image, text, fuse(image, text))


@pytest.fixture(scope="module")
def pair(tiny_model_dir, listings, tmp_path_factory):
    """The same listings and vectors in a FAISS index and in a Milvus Lite one."""
    root = tmp_path_factory.mktemp("stores")
    emb = _embeddings(listings)
    write_index(root / "faiss", tiny_model_dir, listings, emb, progress=False)
    write_index(root / "milvus", tiny_model_dir, listings, emb, progress=False,
                store=StoreSpec("milvus"))
    return SearchIndex.open(root / "faiss"), SearchIndex.open(root / "milvus")


def _queries(n=12, dim=16, seed=1):
    q = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _ranking(hits):
    return [h.listing.vid for h in hits], np.asarray([h.score for h in hits])


def _same(a, b):
    ids_a, scores_a = _ranking(a)
    ids_b, scores_b = _ranking(b)
    assert ids_a == ids_b
    np.testing.assert_allclose(scores_a, scores_b, atol=1e-5)


def test_milvus_info_names_its_collection_and_no_faiss_files(pair):
    faiss_index, milvus_index = pair
    store = milvus_index.info.store
    assert store["kind"] == "milvus" and store["uri"] is None  # milvus.db in the index folder
    assert store["collection"] == f"{store['alias']}_g000001"
    assert (milvus_index.root / "milvus.db").exists()
    assert not list(milvus_index.generation_dir.glob("*.faiss"))
    assert "store" not in json.loads((faiss_index.generation_dir / "info.json").read_text())
    assert {p.name for p in faiss_index.generation_dir.glob("*.faiss")} == {
        "image.faiss", "text.faiss", "product.faiss"}
    assert "vectors in Milvus" in milvus_index.info.summary()


FILTERS = [
    {},
    {"category": "top"},  # replaced by the first listing's top category
    {"category": "full"},  # the first listing's full category path
    {"category": ODD},  # itself and "ODD > Leaf"
    {"category": "No Such Category"},
    {"catalog_id": "catalog"},  # the first listing's catalog
    {"adult": True},
    {"adult": False},
    {"exclude": "some"},
    {"category": "top", "adult": False, "exclude": "some"},
]


@pytest.mark.parametrize("against", ["text", "image", "both"])
@pytest.mark.parametrize("flt", range(len(FILTERS)))
def test_exact_top_k_is_the_same_in_faiss_and_milvus(pair, listings, against, flt):
    faiss_index, milvus_index = pair
    first = listings[0]
    args = dict(FILTERS[flt])
    if args.get("category") == "top":
        args["category"] = first.top_category
    elif args.get("category") == "full":
        args["category"] = first.category
    if "catalog_id" in args:
        args["catalog_id"] = next(x.catalog_id for x in listings if x.catalog_id)
    if "exclude" in args:
        args["exclude"] = set(faiss_index.vids[::3].tolist())
    width = 32 if against == "both" else 16
    for query in _queries(4, width, seed=flt):
        a = faiss_index.search(query, 10, against=against, **args)
        b = milvus_index.search(query, 10, against=against, **args)
        _same(a, b)
        if args.get("category") == ODD:
            assert {h.listing.category for h in a} == {ODD, ODD + " > Leaf"}
        if "adult" in args:
            assert all(h.listing.adult is True for h in a) if args["adult"] else \
                all(h.listing.adult is not True for h in a)
        if "exclude" in args:
            assert not {h.listing.vid for h in a} & args["exclude"]
    if args.get("category") == "No Such Category":
        assert a == [] and b == []


def test_similar_and_classify_agree_across_stores(pair, listings):
    faiss_index, milvus_index = pair
    item = listings[3].product_id
    (_, a), (_, b) = faiss_index.similar(item, 8), milvus_index.similar(item, 8)
    _same(a, b)
    assert [h.same_catalog for h in a] == [h.same_catalog for h in b]


def test_expression_quotes_and_combines_filters():
    expr = milvus.expression(Where(category='a "b" \\ c', catalog_id="X", adult=False,
                                   exclude=frozenset({3, 1})))
    assert expr.startswith('array_contains(categories, "a \\"b\\" \\\\ c") and catalog == ')
    assert expr.endswith("and adult != 1 and vid not in [1, 3]")
    assert milvus.expression(Where()) == ""
    assert milvus.category_path("A > B > C") == ["A", "A > B", "A > B > C"]
    assert milvus.category_path(None) == []


def _compare_after_write(faiss_dir, milvus_dir):
    a, b = SearchIndex.open(faiss_dir), SearchIndex.open(milvus_dir)
    assert a.vids.tolist() == b.vids.tolist()
    for against, width in (("text", 16), ("both", 32)):
        for query in _queries(3, width, seed=7):
            _same(a.search(query, 10, against=against), b.search(query, 10, against=against))
    return a, b


def _collections(index):
    client = milvus.connect(index.vector_store.uri)
    alias = index.info.store["alias"]
    names = sorted(c for c in client.list_collections() if c.startswith(alias + "_g"))
    return names, client.describe_alias(alias)["collection_name"]


def test_add_update_delete_keep_the_stores_equal(tiny_model_dir, listings, tmp_path):
    faiss_dir, milvus_dir = tmp_path / "faiss", tmp_path / "milvus"
    base, extra = listings[:40], listings[40:44]
    emb = _embeddings(base, seed=3)
    write_index(faiss_dir, tiny_model_dir, base, emb, progress=False)
    write_index(milvus_dir, tiny_model_dir, base, emb, progress=False, store=StoreSpec("milvus"))
    changed = [replace(base[2], title="renamed listing"), *extra]
    for root in (faiss_dir, milvus_dir):
        info = update_index(root, changed, progress=False)
        assert (info.added, info.updated) == (4, 1)
    _, b = _compare_after_write(faiss_dir, milvus_dir)
    assert b.info.store["collection"].endswith("_g000002") and b.vector_store.count() == 44
    assert b.listing(base[2].product_id).title == "renamed listing"
    gone = [base[0].product_id, extra[1].product_id]
    for root in (faiss_dir, milvus_dir):
        assert delete_from_index(root, gone).deleted == 2
    a, b = _compare_after_write(faiss_dir, milvus_dir)
    assert len(b) == 42 and b.vector_store.count() == 42
    names, target = _collections(b)
    # the generation in service and the one before it; the alias names the one in service
    assert names == [b.info.store["alias"] + "_g000002", b.info.store["alias"] + "_g000003"]
    assert target == b.info.store["collection"]


def test_a_failed_milvus_write_is_never_visible(tiny_model_dir, listings, tmp_path, monkeypatch):
    root = tmp_path / "milvus"
    write_index(root, tiny_model_dir, listings[:30], _embeddings(listings[:30]), progress=False,
                store=StoreSpec("milvus"))
    before = SearchIndex.open(root)
    alias = before.info.store["alias"]
    client = milvus.connect(before.vector_store.uri)
    monkeypatch.setattr(milvus, "INSERT_BATCH", 4)
    real_insert, seen = client.insert, []

    def insert(name, rows, **kwargs):
        # while the new collection is being filled, readers of the index and of the alias see
        # the generation in service, complete
        reader = SearchIndex.open(root)
        seen.append((reader.generation, reader.vector_store.count(),
                     client.describe_alias(alias)["collection_name"]))
        if len(seen) == 3 and fail:
            raise RuntimeError("the database went away")
        return real_insert(name, rows, **kwargs)

    monkeypatch.setattr(client, "insert", insert)
    fail = True
    with pytest.raises(RuntimeError):
        delete_from_index(root, [listings[0].product_id])
    assert set(seen) == {("g000001", 30, alias + "_g000001")}
    assert SearchIndex.open(root).generation == "g000001"
    assert not client.has_collection(alias + "_g000002")  # the half-filled one is dropped
    fail, seen[:] = False, []
    info = delete_from_index(root, [listings[0].product_id])
    assert set(seen) == {("g000001", 30, alias + "_g000001")}
    assert client.describe_alias(alias)["collection_name"] == info.store["collection"]
    assert SearchIndex.open(root).vector_store.count() == 29


def test_approximate_milvus_index_measures_recall_at_build(tiny_model_dir, listings, tmp_path):
    root = tmp_path / "ivf"
    settings = VectorSettings(kind="ivf", nlist=4, recall_queries=40, target_recall=0.9)
    info = write_index(root, tiny_model_dir, listings, _embeddings(listings), progress=False,
                       settings=settings, store=StoreSpec("milvus"))
    text = info.vectors["text"]
    assert text.kind == "ivf" and text.nlist == 4 and text.recall_queries == 40
    # Milvus Lite clusters each segment into more lists than asked for: nprobe is tuned past
    # nlist until the target is reached
    assert 0.9 <= text.recall_at_10 <= 1.0 and text.nprobe >= 1
    assert "recall@10 vs exact" in info.summary()
    index = SearchIndex.open(root)
    assert index.info.vectors["text"].recall_at_10 == text.recall_at_10  # kept in info.json
    for row in (0, 9, 33):  # a stored vector is in the cell it searches first: found at the top
        hits = index.search(np.asarray(index.vectors["text"][row]), 3, against="text")
        assert hits[0].listing.vid == int(index.vids[row])


@pytest.mark.parametrize("kind", ["hnsw", "ivf_sq8"])
def test_milvus_compressed_kinds_match_the_exact_top_k(kind, pair, tiny_model_dir, listings,
                                                       tmp_path):
    """HNSW and IVF_SQ8 in Milvus Lite: recall measured at build, served through SearchIndex,
    the top-5 of every query close to exact FAISS's."""
    settings = VectorSettings(kind=kind, nlist=4, recall_queries=40, target_recall=0.9)
    info = write_index(tmp_path / kind, tiny_model_dir, listings, _embeddings(listings),
                       progress=False, settings=settings, store=StoreSpec("milvus"))
    stats = info.vectors["product"]
    assert stats.kind == kind and stats.recall_queries == 40 and stats.param is not None
    index, exact = SearchIndex.open(tmp_path / kind), pair[0]
    overlap = []
    for q in _queries():
        found = {h.listing.vid for h in index.search(q, 5, against="image")}
        overlap.append(len(found & {h.listing.vid for h in exact.search(q, 5, against="image")}))
    assert np.mean(overlap) >= 4.0


@pytest.mark.parametrize("kind, message", [("ivf_pq", "Milvus Lite cannot build IVF_PQ"),
                                           ("diskann", "Milvus Lite cannot build DISKANN"),
                                           ("ivf_fp16", "no Milvus index type")])
def test_kinds_milvus_lite_cannot_build_are_clear_errors(kind, message, tiny_model_dir, listings,
                                                         tmp_path):
    with pytest.raises(ConfigError, match=message):
        write_index(tmp_path / kind, tiny_model_dir, listings, _embeddings(listings),
                    progress=False, settings=VectorSettings(kind=kind, nlist=4),
                    store=StoreSpec("milvus"))
    assert not (tmp_path / kind / "CURRENT").exists()  # nothing was put in service
    with pytest.raises(ConfigError, match="diskann is a Milvus index"):  # and FAISS has no DiskANN
        write_index(tmp_path / "faiss", tiny_model_dir, listings, _embeddings(listings),
                    progress=False, settings=VectorSettings(kind="diskann"))


def test_store_settings_and_damage_are_clear_errors(pair, tmp_path):
    with pytest.raises(ConfigError, match="for --store milvus"):
        StoreSpec("faiss", uri="x.db")
    with pytest.raises(ConfigError, match="store must be one of"):
        StoreSpec("qdrant")
    with pytest.raises(ConfigError, match="not a Milvus name"):
        StoreSpec("milvus", collection="1-bad")
    with pytest.raises(ConfigError, match="must end in .db"):
        milvus.recorded_uri(str(tmp_path / "vectors.sqlite"))
    assert milvus.recorded_uri("http://milvus:19530") == "http://milvus:19530"
    _, milvus_index = pair
    info = dict(milvus_index.info.to_dict(), store=dict(milvus_index.info.store,
                                                        collection="eclip_missing_g000001"))
    with pytest.raises(SearchIndexError, match="has no collection eclip_missing_g000001"):
        milvus.MilvusStore(info["store"], milvus_index.root, milvus_index.info.vectors)


@pytest.mark.e2e
def test_cli_index_with_the_milvus_store(tiny_catalog, tiny_model_dir, tmp_path, capsys):
    from eclip.cli import main

    out, lite = tmp_path / "idx", tmp_path / "elsewhere" / "vectors.db"
    assert main(["index", "--store", "milvus", "--uri", str(lite), "--collection", "shop",
                 "--model", str(tiny_model_dir), "--catalog", str(tiny_catalog),
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "vectors in Milvus" in printed and "collection shop_g000001, alias shop" in printed
    index = SearchIndex.open(out)
    assert index.info.store["uri"] == str(lite.resolve()) and not (out / "milvus.db").exists()
    gone = index.vids[:2]
    ids = [index.store.fetch(gone.tolist())[int(v)].product_id for v in gone]
    assert main(["index", "--delete", ",".join(ids), "--out", str(out)]) == 0
    assert "deleted 2)" in capsys.readouterr().out
    assert SearchIndex.open(out).vector_store.count() == len(index) - 2
    assert main(["index", "--out", str(out), "--uri", "x.db", "--delete", "x"]) == 2
    err = capsys.readouterr().err
    assert "--uri and --collection choose the store" in err and err.count("\n") == 1


@pytest.mark.distributed
def test_a_milvus_lite_file_held_by_another_process_is_a_one_line_error(
        tiny_model_dir, listings, tmp_path, capsys):
    import subprocess
    import sys

    from eclip.cli import main

    root = tmp_path / "idx"
    write_index(root, tiny_model_dir, listings[:20], _embeddings(listings[:20]), progress=False,
                store=StoreSpec("milvus"))
    milvus.release(milvus.resolve_uri(None, root))  # let go of it; another process opens it
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pymilvus import MilvusClient; "
         f"c = MilvusClient({str(root / 'milvus.db')!r}); print('held', flush=True); "
         "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["index", "--delete", listings[0].product_id, "--out", str(root)]) == 2
        err = capsys.readouterr().err
        assert "is open in another process" in err and err.count("\n") == 1
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert main(["index", "--delete", listings[0].product_id, "--out", str(root)]) == 0


def test_two_indexes_never_share_a_milvus_alias(tiny_model_dir, listings, tmp_path):
    lite = str(tmp_path / "shared.db")
    rows = listings[:12]
    first = write_index(tmp_path / "a", tiny_model_dir, rows, _embeddings(rows), progress=False,
                        store=StoreSpec("milvus", uri=lite, collection="shop"))
    with pytest.raises(SearchIndexError, match="choose another --collection"):
        write_index(tmp_path / "b", tiny_model_dir, rows, _embeddings(rows), progress=False,
                    store=StoreSpec("milvus", uri=lite, collection="shop"))
    index = SearchIndex.open(tmp_path / "a")
    assert index.vector_store.count() == 12 and index.info.store == first.store
    # the default alias is per folder: both live in one database
    write_index(tmp_path / "c", tiny_model_dir, rows, _embeddings(rows), progress=False,
                store=StoreSpec("milvus", uri=lite))
    assert SearchIndex.open(tmp_path / "c").info.store["alias"] != "shop"
