"""``eclip index --embeddings``: an index built (or updated) from what ``eclip embed`` wrote, without
running the model, answers like one that embeds; vectors of another model are refused."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from eclip.catalog.readers import read_catalog
from eclip.encode.listings import (embed_listings, read_embeddings, write_embeddings,
                                   write_embeddings_manifest)
from eclip.model import DualEncoder
from eclip.model.files import model_identity
from eclip.search import SearchIndex, SearchIndexError, build_index, update_index


@pytest.fixture(scope="module")
def listings(tiny_catalog):
    return read_catalog(tiny_catalog).listings


@pytest.fixture(scope="module")
def stored(tiny_model_dir, listings, tmp_path_factory):
    """The catalog's vectors as ``eclip embed`` writes them: one Parquet file and, as the ray
    engine does, a folder of two parts with its manifest."""
    out = tmp_path_factory.mktemp("stored")
    emb = embed_listings(DualEncoder.from_pretrained(tiny_model_dir), listings, progress=False)
    emb.model_sha1 = model_identity(tiny_model_dir)
    write_embeddings(emb, out / "emb.parquet", listings)
    parts = out / "parts"
    parts.mkdir()
    half = len(listings) // 2
    for k, rows in enumerate((slice(0, half), slice(half, None))):
        ids = emb.product_ids[rows]
        part = type(emb)(ids, emb.image[rows], emb.text[rows], emb.product[rows],
                         emb.fusion_weight, model_sha1=emb.model_sha1)
        write_embeddings(part, parts / f"part-{k:05d}.parquet", listings[rows])
    write_embeddings_manifest(parts, [("part-00000.parquet", half),
                                      ("part-00001.parquet", len(listings) - half)],
                              emb.fusion_weight, model_sha1=emb.model_sha1)
    return out


def top_ids(index_dir, listings, k=10):
    index = SearchIndex.open(index_dir)
    out = []
    for x in listings[:12]:
        for against in ("image", "text", "both"):
            hits = index.search_text(x.title, k, against=against)
            out.append([h.listing.product_id for h in hits])
    return out


def test_index_from_stored_vectors_answers_like_one_that_embeds(tiny_model_dir, listings, stored,
                                                                tmp_path):
    build_index(tiny_model_dir, listings, tmp_path / "embedded", progress=False)
    expected = top_ids(tmp_path / "embedded", listings)
    for source in (stored / "emb.parquet", stored / "parts"):
        out = tmp_path / source.name
        build_index(tiny_model_dir, listings, out, embeddings=source, progress=False)
        assert top_ids(out, listings) == expected, source.name


def test_an_update_from_stored_vectors_equals_one_that_embeds(tiny_model_dir, listings, stored,
                                                              tmp_path):
    first, rest = listings[:60], listings[60:]
    build_index(tiny_model_dir, first, tmp_path / "a", progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    update_index(tmp_path / "a", rest, progress=False)
    update_index(tmp_path / "b", rest, embeddings=stored / "parts", progress=False)
    assert top_ids(tmp_path / "a", listings) == top_ids(tmp_path / "b", listings)


def test_vectors_of_another_model_are_refused(tiny_model_dir, listings, stored, tmp_path):
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)
    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, other / "model.safetensors")
    with pytest.raises(SearchIndexError, match="another model"):
        build_index(other, listings, tmp_path / "x", embeddings=stored / "emb.parquet",
                    progress=False)
    # a listing the stored vectors do not cover is named, not silently left out
    extra = listings[0].__class__(**{**listings[0].to_dict(), "product_id": "not-embedded"})
    with pytest.raises(SearchIndexError, match="not-embedded"):
        build_index(tiny_model_dir, listings + [extra], tmp_path / "y",
                    embeddings=stored / "emb.parquet", progress=False)


def test_embed_records_the_model_and_index_reads_it(tiny_catalog, tiny_model_dir, tmp_path):
    out = tmp_path / "emb.parquet"
    run = [sys.executable, "-m", "eclip"]
    done = subprocess.run(run + ["embed", "--model", str(tiny_model_dir), "--catalog",
                                 str(tiny_catalog), "--out", str(out), "--quiet", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    emb, _ = read_embeddings(out)
    assert emb.model_sha1 == model_identity(tiny_model_dir)
    done = subprocess.run(run + ["index", "--embeddings", str(out), "--model", str(tiny_model_dir),
                                 "--catalog", str(tiny_catalog), "--out", str(tmp_path / "idx"),
                                 "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    index = SearchIndex.open(tmp_path / "idx")
    assert index.info.listings == len(emb.product_ids)
    assert index.info.model_sha1 == emb.model_sha1
    assert index.info.fusion_weight == pytest.approx(emb.fusion_weight)
