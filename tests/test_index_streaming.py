"""A build from stored vectors streams them (issue 20): read a block at a time from each part into
the generation's files, never all in memory. It must write what the in-memory build writes: the
same vector files byte for byte, the same adult heads, the same FAISS answers, whatever the order
of the stored rows and however many blocks they come in."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eclip.catalog.schema import Listing
from eclip.encode import Embeddings, fuse
from eclip.encode.identity import model_sha256
from eclip.encode.listings import (StoredEmbeddings, read_embeddings, write_embeddings,
                                   write_embeddings_manifest)
from eclip.search import SearchIndex, VectorSettings, write_index
from eclip.search.build import index_from_embeddings
from vectors import clustered_unit_vectors

N, DIM = 2000, 32
FILES = ("vids.npy", "image.npy", "text.npy", "product.npy")


@pytest.fixture(scope="module")
def catalog():
    """2,000 listings in 4 categories, clustered vectors, adult flags known for most."""
    group, image, text = clustered_unit_vectors(5, N, DIM, products=40)
    listings = [Listing(f"p{i:05d}", f"item {i}", [], category=("Food", "Home", "Auto",
                                                                  "Toys")[group[i] % 4],
                        adult=None if i % 11 == 0 else bool(group[i] % 9 == 0))
                for i in range(N)]
    emb = Embeddings([x.product_id for x in listings], image, text, fuse(image, text, 0.5), 0.5)
    return listings, emb


def _parts(folder, emb: Embeddings, rows: np.ndarray, parts: int, identity: str):
    """``emb``'s ``rows`` (in that order) as ``eclip embed --engine ray`` writes them."""
    written = []
    for number, chunk in enumerate(np.array_split(rows, parts)):
        name = f"part-{number:05d}.parquet"
        write_embeddings(Embeddings([emb.product_ids[i] for i in chunk], emb.image[chunk],
                                    emb.text[chunk], emb.product[chunk], emb.fusion_weight),
                         folder / name, model_sha256=identity)
        written.append((name, len(chunk)))
    write_embeddings_manifest(folder, written, emb.fusion_weight, model_sha256=identity)
    return folder


def _generation(index):
    return index / json.loads((index / "CURRENT").read_text())["generation"]


def _same_files(a, b) -> None:
    for name in FILES:
        np.testing.assert_array_equal(np.load(a / name), np.load(b / name), err_msg=name)
    assert json.loads((a / "heads.json").read_text()) == json.loads((b / "heads.json").read_text())


def test_blocks_are_bounded_and_read_the_parts_in_order(catalog, tiny_model_dir, tmp_path):
    _, emb = catalog
    rows = np.random.default_rng(0).permutation(N)
    stored = StoredEmbeddings(_parts(tmp_path / "parts", emb, rows, 3, "x" * 64))
    assert len(stored) == N and stored.model_sha256 == "x" * 64
    assert stored.dims == {"image_embedding": DIM, "text_embedding": DIM,
                           "product_embedding": 2 * DIM}
    seen = 0
    for start, block in stored.blocks(150):
        n = len(block.image)
        assert start == seen and 0 < n <= 150
        np.testing.assert_array_equal(block.product, emb.product[rows[start:start + n]])
        seen += n
    assert seen == N
    whole, _ = read_embeddings(tmp_path / "parts")
    assert whole.product_ids == [emb.product_ids[i] for i in rows]
    np.testing.assert_array_equal(whole.text, emb.text[rows])


@pytest.mark.parametrize("kind", ["ivf_sq8", "exact"])
def test_a_streamed_build_writes_what_the_in_memory_build_writes(kind, catalog, tiny_model_dir,
                                                                 tmp_path):
    listings, emb = catalog
    identity = model_sha256(tiny_model_dir)
    # stored in another order than the catalog's, in 3 parts read 128 rows at a time: every block
    # lands on scattered rows of the generation's files
    parts = _parts(tmp_path / "parts", emb, np.random.default_rng(1).permutation(N), 3, identity)
    settings = VectorSettings(kind=kind, nlist=16, recall_queries=100)
    streamed = tmp_path / "streamed"
    index_from_embeddings(streamed, parts, listings, model_dir=tiny_model_dir, settings=settings,
                          thumbnails=False, progress=False, block_rows=128)
    memory = tmp_path / "memory"
    write_index(memory, tiny_model_dir, listings, emb, settings=settings, thumbnails=False,
                progress=False)
    _same_files(_generation(streamed), _generation(memory))
    a, b = SearchIndex.open(streamed), SearchIndex.open(memory)
    assert a.info.vectors == b.info.vectors  # the same nprobe tuned, the same recall measured
    for i in range(0, N, 97):
        for against in ("image", "text", "both"):
            one = a.search(emb.modality(against)[i], 10, against=against)
            two = b.search(emb.modality(against)[i], 10, against=against)
            assert [h.listing.product_id for h in one] == [h.listing.product_id for h in two]
            assert [h.score for h in one] == [h.score for h in two]


def test_a_streamed_update_writes_the_vectors_of_a_whole_build(catalog, tiny_model_dir, tmp_path):
    listings, emb = catalog
    identity = model_sha256(tiny_model_dir)
    first = _parts(tmp_path / "first", emb, np.arange(0, N, 2), 2, identity)  # every other one
    rest = _parts(tmp_path / "rest", emb, np.random.default_rng(2).permutation(N), 4, identity)
    settings = VectorSettings(kind="ivf_sq8", nlist=16, recall_queries=100)
    out = tmp_path / "index"
    index_from_embeddings(out, first, listings, model_dir=tiny_model_dir, settings=settings,
                          thumbnails=False, progress=False, block_rows=100)
    updated = index_from_embeddings(out, rest, listings, update=True, thumbnails=False,
                                    progress=False, block_rows=100)
    assert updated.info.added == N // 2 and updated.info.updated == N // 2
    # the first write gave vids to the even listings, the update to the odd ones: the files hold
    # each listing's vectors at its vid's row, as an in-memory build in that vid order does
    order = np.r_[np.arange(0, N, 2), np.arange(1, N, 2)]
    whole = tmp_path / "whole"
    write_index(whole, tiny_model_dir, [listings[i] for i in order],
                Embeddings([emb.product_ids[i] for i in order], emb.image[order], emb.text[order],
                           emb.product[order], emb.fusion_weight),
                settings=settings, thumbnails=False, progress=False)
    _same_files(_generation(out), _generation(whole))
    index = SearchIndex.open(out)
    for i in range(1, N, 101):  # the added listings are found by their own vectors
        assert index.search(emb.product[i], 1)[0].listing.product_id == f"p{i:05d}"
