"""How an index keeps its vectors on disk (issue 20, at 10 M listings): float16 rows, the fused
"both" vectors computed on read instead of stored, and embeddings Parquet written the same ways.

Each is pinned by an equality with the float32, fused-stored layout it replaces: computing the
fused vectors on read writes the same FAISS indexes and answers as storing them; float16 rows
return the float32 top-10 up to ties within float16 rounding."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from eclip.catalog.schema import Listing
from eclip.encode import Embeddings, fuse
from eclip.encode.identity import model_sha256
from eclip.encode.listings import StoredEmbeddings, write_embeddings, write_embeddings_manifest
from eclip.errors import ConfigError
from eclip.search import SearchIndex, VectorSettings
from eclip.search.build import index_from_embeddings
from eclip.search.generation import FusedRows, StoredVectors
from vectors import clustered_unit_vectors

N, DIM, WEIGHT = 1500, 32, 0.3
# float16 keeps 11 significant bits: a unit vector's inner product moves by at most about
# 2 * 2**-11 (both sides rounded); re-ranking scores the rounded vectors
FP16_SCORE = 2e-3


@pytest.fixture(scope="module")
def catalog():
    group, image, text = clustered_unit_vectors(7, N, DIM, products=60)
    categories = ("Food", "Home", "Auto")
    listings = [Listing(f"p{i:05d}", f"item {i}", [], category=categories[group[i] % 3],
                        adult=None if i % 13 == 0 else bool(group[i] % 7 == 0))
                for i in range(N)]
    emb = Embeddings([x.product_id for x in listings], image, text, fuse(image, text, WEIGHT),
                     WEIGHT)
    return listings, emb


def _parts(folder, emb: Embeddings, identity: str, parts: int = 3, **how):
    written = []
    for number, chunk in enumerate(np.array_split(np.arange(len(emb.product_ids)), parts)):
        name = f"part-{number:05d}.parquet"
        write_embeddings(Embeddings([emb.product_ids[i] for i in chunk], emb.image[chunk],
                                    emb.text[chunk], emb.product[chunk], emb.fusion_weight),
                         folder / name, model_sha256=identity, **how)
        written.append((name, len(chunk)))
    write_embeddings_manifest(folder, written, emb.fusion_weight, model_sha256=identity)
    return folder


def _generation(index):
    return index / json.loads((index / "CURRENT").read_text())["generation"]


def _build(out, parts, listings, model, **settings):
    settings = VectorSettings(**{"kind": "ivf_sq8", "nlist": 16, "recall_queries": 100,
                                 **settings})
    index_from_embeddings(out, parts, listings, model_dir=model, settings=settings,
                          thumbnails=False, progress=False, block_rows=200)
    return _generation(out)


def test_fused_rows_are_the_fusion_of_the_stored_rows(catalog):
    _, emb = catalog
    rows = FusedRows(emb.image, emb.text.astype(np.float16), WEIGHT)
    whole = fuse(emb.image, emb.text.astype(np.float16).astype(np.float32), WEIGHT)
    assert rows.shape == (N, 2 * DIM) and len(rows) == N and rows.ndim == 2
    np.testing.assert_array_equal(rows[7], whole[7])
    np.testing.assert_array_equal(rows[10:20], whole[10:20])
    picked = np.array([3, 99, 1200])
    np.testing.assert_array_equal(rows[picked], whole[picked])
    np.testing.assert_array_equal(np.asarray(rows), whole)


def test_embeddings_parquet_in_float16_without_the_fused_column(catalog, tmp_path):
    _, emb = catalog
    parts = _parts(tmp_path / "parts", emb, "x" * 64, dtype="float16", fused=False)
    full = _parts(tmp_path / "full", emb, "x" * 64)
    small = sum(p.stat().st_size for p in parts.glob("*.parquet"))
    assert small < 0.4 * sum(p.stat().st_size for p in full.glob("*.parquet"))
    stored = StoredEmbeddings(parts)
    assert not stored.stores_fused and stored.fusion_weight == WEIGHT
    assert stored.dims["product_embedding"] == 2 * DIM
    image16 = emb.image.astype(np.float16).astype(np.float32)
    text16 = emb.text.astype(np.float16).astype(np.float32)
    seen = 0
    for start, block in stored.blocks(256):
        n = len(block.image)
        np.testing.assert_array_equal(block.image, image16[start:start + n])
        np.testing.assert_array_equal(block.product, fuse(image16[start:start + n],
                                                          text16[start:start + n], WEIGHT))
        seen += n
    assert seen == N
    with pytest.raises(ConfigError, match="float32 or float16"):
        write_embeddings(emb, tmp_path / "x.parquet", dtype="int8")


def test_parts_that_disagree_on_the_fused_column_are_refused(catalog, tmp_path):
    _, emb = catalog
    folder = tmp_path / "mixed"
    folder.mkdir()
    half = N // 2
    for number, (rows, fused) in enumerate(((slice(0, half), True), (slice(half, N), False))):
        write_embeddings(Embeddings(emb.product_ids[rows], emb.image[rows], emb.text[rows],
                                    emb.product[rows], WEIGHT),
                         folder / f"part-{number:05d}.parquet", fused=fused)
    write_embeddings_manifest(folder, [("part-00000.parquet", half),
                                       ("part-00001.parquet", N - half)], WEIGHT)
    with pytest.raises(Exception, match="disagree on storing product_embedding"):
        StoredEmbeddings(folder)


def test_fused_vectors_computed_on_read_build_the_same_index(catalog, tiny_model_dir, tmp_path):
    listings, emb = catalog
    identity = model_sha256(tiny_model_dir)
    stored_parts = _parts(tmp_path / "with", emb, identity)
    lean_parts = _parts(tmp_path / "without", emb, identity, fused=False)
    a = _build(tmp_path / "stored", stored_parts, listings, tiny_model_dir)
    b = _build(tmp_path / "computed", lean_parts, listings, tiny_model_dir, store_fused=False)
    assert (a / "product.npy").is_file() and not (b / "product.npy").exists()
    for name in ("vids.npy", "image.npy", "text.npy"):
        np.testing.assert_array_equal(np.load(a / name), np.load(b / name), err_msg=name)
    assert json.loads((a / "heads.json").read_text()) == json.loads((b / "heads.json").read_text())
    for space in ("image", "text", "product"):  # the FAISS indexes byte for byte
        assert np.array_equal(faiss.serialize_index(faiss.read_index(str(a / f"{space}.faiss"))),
                              faiss.serialize_index(faiss.read_index(str(b / f"{space}.faiss"))))
    one, two = SearchIndex.open(tmp_path / "stored"), SearchIndex.open(tmp_path / "computed")
    assert one.info.vectors == two.info.vectors  # the same nprobe, the same recall
    assert not two.info.settings.store_fused
    np.testing.assert_array_equal(np.asarray(two.vectors["product"]), emb.product)
    for i in range(0, N, 83):
        for against in ("image", "text", "both"):
            x = one.search(emb.modality(against)[i], 10, against=against)
            y = two.search(emb.modality(against)[i], 10, against=against)
            assert [(h.listing.product_id, h.score) for h in x] == \
                [(h.listing.product_id, h.score) for h in y]
        assert [h.listing.product_id for h in one.similar(f"p{i:05d}", 5)[1]] == \
            [h.listing.product_id for h in two.similar(f"p{i:05d}", 5)[1]]
        # a small filter is answered by scanning its rows (fused on read here)
        x = one.search(emb.product[i], 10, category="Auto")
        y = two.search(emb.product[i], 10, category="Auto")
        assert [h.listing.product_id for h in x] == [h.listing.product_id for h in y]


def test_float16_rows_give_the_float32_top_10_up_to_rounding(catalog, tiny_model_dir, tmp_path):
    listings, emb = catalog
    identity = model_sha256(tiny_model_dir)
    parts = _parts(tmp_path / "parts", emb, identity)
    a = _build(tmp_path / "f32", parts, listings, tiny_model_dir, kind="exact")
    b = _build(tmp_path / "f16", parts, listings, tiny_model_dir, kind="exact",
               vector_dtype="float16", store_fused=False)
    assert np.load(b / "image.npy", mmap_mode="r").dtype == np.float16
    assert (b / "image.npy").stat().st_size < 0.51 * (a / "image.npy").stat().st_size + 256
    one, two = SearchIndex.open(tmp_path / "f32"), SearchIndex.open(tmp_path / "f16")
    assert two.info.settings.vector_dtype == "float16"
    for i in range(0, N, 41):
        for against in ("image", "text", "both"):
            query = emb.modality(against)[i]
            x = one.search(query, 10, against=against)
            y = two.search(query, 10, against=against)
            # each float16 hit is a float32 top-10 hit, or tied with the 10th within rounding
            tenth = x[-1].score
            vectors = one.vectors[{"both": "product"}.get(against, against)]
            for hit in y:
                exact = float(np.asarray(vectors[int(np.searchsorted(one.vids,
                                                                      hit.listing.vid))]) @ query)
                assert exact >= tenth - FP16_SCORE
                assert abs(exact - hit.score) <= FP16_SCORE
            assert len({h.listing.vid for h in x} & {h.listing.vid for h in y}) >= 8


def test_an_update_keeps_the_lean_layout(catalog, tiny_model_dir, tmp_path):
    listings, emb = catalog
    identity = model_sha256(tiny_model_dir)
    half = N // 2
    first = Embeddings(emb.product_ids[:half], emb.image[:half], emb.text[:half],
                       emb.product[:half], WEIGHT)
    rest = Embeddings(emb.product_ids[half:], emb.image[half:], emb.text[half:],
                      emb.product[half:], WEIGHT)
    out = tmp_path / "index"
    _build(out, _parts(tmp_path / "first", first, identity, parts=1, fused=False),
           listings[:half], tiny_model_dir, vector_dtype="float16", store_fused=False)
    index_from_embeddings(out, _parts(tmp_path / "rest", rest, identity, parts=2, fused=False),
                          listings[half:], update=True, thumbnails=False, progress=False)
    generation = _generation(out)
    assert not (generation / "product.npy").exists()
    stored = StoredVectors.load(generation, mmap=True)
    assert stored.arrays["text"].dtype == np.float16 and len(stored.vids) == N
    expected = fuse(emb.image.astype(np.float16), emb.text.astype(np.float16), WEIGHT)
    np.testing.assert_array_equal(np.asarray(stored.arrays["product"]), expected)
    index = SearchIndex.open(out)
    for i in range(half + 3, N, 97):  # the added listings are found by their own vectors
        assert index.search(emb.product[i], 1)[0].listing.product_id == f"p{i:05d}"


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="float32 or float16"):
        VectorSettings(vector_dtype="bfloat16")
    with pytest.raises(ConfigError, match="train_per_list"):
        VectorSettings(train_per_list=0)


# ------------------------------------------------------------------ two-level k-means (large nlist)
def test_list_shares_follow_the_cells_sizes_and_never_exceed_them():
    from eclip.search.compressed import _shares

    sizes = np.array([500, 3, 0, 200, 97])
    shares = _shares(sizes, 80)
    assert shares.sum() == 80 and np.all(shares <= sizes) and shares[2] == 0
    assert shares[0] > shares[3] > shares[4]
    tight = _shares(np.array([5, 1, 1]), 7)  # every vector its own list
    assert tight.tolist() == [5, 1, 1]


@pytest.mark.parametrize("kind", ["ivf", "ivf_sq8", "ivf_pq"])
def test_two_level_training_fills_every_list_and_reaches_the_recall(kind, catalog):
    from eclip.search.vectors import VectorIndex

    _, emb = catalog
    ids = np.arange(N) * 3
    settings = VectorSettings(kind=kind, nlist=36, two_level_from=1, recall_queries=100,
                              train_per_list=40, pq_m=8)
    index = VectorIndex.build(emb.product, ids, settings)
    ivf = faiss.extract_index_ivf(index.index)
    assert ivf.quantizer.ntotal == 36 and ivf.is_trained and index.index.is_trained
    sizes = [ivf.invlists.list_size(i) for i in range(36)]
    assert sum(sizes) == N and min(sizes) > 0  # every list holds vectors
    assert index.stats.recall_at_10 >= 0.95
    assert set(index.stats.seconds) == {"train", "add", "tune", "cpu"}
    again = VectorIndex.build(emb.product, ids, settings)  # deterministic, as the flat k-means
    assert np.array_equal(faiss.serialize_index(index.index), faiss.serialize_index(again.index))


# ------------------------------------------------ the metadata's bulk load (fast paths)
ASCII_TITLES = ["Nike Air Max 90 &amp; socks", "  TEA\tgreen\x07 100g ", "<b>Bold</b> &lt;3 deal",
                "&amp;amp;quot;nested&amp;quot;", "plain words 123", "", "A\x00B\x1fC\x7fD"]
OTHER_TITLES = ["Café crème", "한글 상품명 ㅋㅋ", "ＡＢＣ full width", "naïve résumé", "Ａ\u00a0b"]


def test_the_ascii_fast_paths_normalise_as_the_general_ones(monkeypatch):
    import unicodedata

    from eclip.catalog import text as catalog_text
    from eclip.search import lexical

    fast = {t: (catalog_text.basic_normalize(t), lexical.normalize(t),
                lexical.indexed_text(t, "bigram")) for t in ASCII_TITLES + OTHER_TITLES}
    # the general paths alone: no string counts as ASCII
    monkeypatch.setattr(catalog_text, "_ascii", lambda text: False)
    monkeypatch.setattr(lexical, "_ascii", lambda text: False)
    for text, expected in fast.items():
        assert (catalog_text.basic_normalize(text), lexical.normalize(text),
                lexical.indexed_text(text, "bigram")) == expected, text
    assert unicodedata.normalize("NFC", fast["Café crème"][1]) == "cafe creme"


def test_a_new_store_written_in_bulk_holds_what_a_replacing_write_holds(tmp_path):
    from eclip.search.metadata import MetadataStore

    listings = [Listing(f"p{i}", t, [], brand=("Acme", None, "Café")[i % 3],
                        category=("Food > Tea", "Home")[i % 2],
                        attributes={"colour": "red"} if i % 4 == 0 else {})
                for i, t in enumerate((ASCII_TITLES + OTHER_TITLES) * 3)]
    stores = []
    for name, bulk in (("bulk", True), ("plain", False)):
        store = MetadataStore.create(tmp_path / f"{name}.sqlite", bulk=bulk)
        if not bulk:
            store._new = False  # the general path: every lexical row deleted before insert
        vids = store.assign_vids([x.product_id for x in listings])
        store.upsert(vids, listings, [["a.jpg"] if i % 5 == 0 else []
                                      for i in range(len(listings))])
        store.commit()
        stores.append(store)
    bulk, plain = stores
    for table in ("listings", "lexical"):
        query = f"SELECT * FROM {table} ORDER BY rowid"
        assert bulk._conn.execute(query).fetchall() == plain._conn.execute(query).fetchall()
    for query in ("tea", "acme", "cafe", "한글"):
        assert bulk.lexical_search(query, 50) == plain.lexical_search(query, 50)
    assert bulk.fetch(range(len(listings))) == plain.fetch(range(len(listings)))
    # a second write to the same store replaces rows: no duplicate in the lexical index
    bulk.upsert(np.array([0, 1]), listings[:2], [[], []])
    bulk.commit()
    assert bulk._conn.execute("SELECT COUNT(*) FROM lexical").fetchone()[0] == len(listings)
