"""One definition of a listing's vectors: eval's views, `eclip embed` and the search index agree.

The evaluation reads a listing's title as its text (category and attributes are the labels of its
tasks); ``eclip embed`` and search read the text the model's composer makes. For a model whose
composer renders the title alone the three must give the very same image, text and fused vectors.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from eclip.catalog.config import DataConfig
from eclip.cli import main
from eclip.encode import (FUSION_WEIGHT, choose_fusion_weight, embed_listings, fuse, fuse_query,
                          title_composer, unit_rows)
from eclip.engines.jobs import embed_catalog
from eclip.model import load_model
from eclip.search import SearchIndex, build_index
from eclip.tasks.views import listing_cache, model_views


@pytest.fixture(scope="module")
def title_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model, saved with a composer that renders a listing as its title alone."""
    model = load_model(tiny_model_dir)
    model.config.text_composer = {"segments": ["{title}"]}
    model.config.fusion_weight = 0.7  # as training would have chosen it: every path must use it
    return model.save_pretrained(tmp_path_factory.mktemp("title_model") / "model")


@pytest.fixture(scope="module")
def few_listings(listings):
    return listings[:40]


def test_fuse_is_the_weighted_mean_of_the_two_similarities():
    rng = np.random.default_rng(0)
    image, text = unit_rows(rng.normal(size=(6, 5))), unit_rows(rng.normal(size=(6, 5)))
    for w in (0.0, 0.3, FUSION_WEIGHT, 1.0):
        both = fuse(image, text, w)
        assert both.shape == (6, 10)
        np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(both @ both.T, w * image @ image.T + (1 - w) * text @ text.T,
                                   atol=1e-6)
        # a query of one modality scores w * <q, image> + (1 - w) * <q, text>
        query = text[:2]
        np.testing.assert_allclose(fuse_query(query, w) @ both.T,
                                   w * query @ image.T + (1 - w) * query @ text.T, atol=1e-6)
    with pytest.raises(ValueError):
        fuse(image, text, 1.5)


def test_eval_embed_and_index_give_the_same_vectors(title_model_dir, few_listings, tiny_catalog,
                                                    tmp_path):
    model = load_model(title_model_dir)
    views = model_views("m", model, few_listings, listing_cache(model, few_listings, [], progress=False),
                        progress=False)

    out = tmp_path / "emb.parquet"
    keep = tmp_path / "catalog.jsonl"
    ids = {x.product_id for x in few_listings}
    keep.write_text("".join(line + "\n" for line in tiny_catalog.read_text().splitlines()
                            if any(f'"{pid}"' in line for pid in ids)), encoding="utf-8")
    assert main(["embed", "--model", str(title_model_dir), "--catalog", str(keep),
                 "--image-root", str(tiny_catalog.parent), "--out", str(out)]) == 0
    # the library function behind the command writes the same vectors
    library = embed_catalog(title_model_dir, DataConfig(catalog=str(keep),
                                                        image_root=str(tiny_catalog.parent)),
                            tmp_path / "library.parquet", progress=False)
    assert library.count == len(few_listings) and library.manifest is None
    assert pq.read_table(library.out).equals(pq.read_table(out))
    table = pq.read_table(out).to_pydict()
    order = [table["product_id"].index(x.product_id) for x in few_listings]
    embedded = {m: np.asarray(table[f"{m}_embedding"], dtype=np.float32)[order]
                for m in ("image", "text", "product")}

    index_dir = tmp_path / "index"
    build_index(title_model_dir, few_listings, index_dir, progress=False)
    index = SearchIndex.open(index_dir)
    rows = [int(np.searchsorted(index.vids, index.listing(x.product_id).vid)) for x in few_listings]
    indexed = {m: np.asarray(index.vectors[m])[rows] for m in ("image", "text", "product")}
    index.close()

    for modality, stored in (("image", "image"), ("text", "text"), ("both", "product")):
        np.testing.assert_allclose(embedded[stored], views.task[modality], atol=1e-5)
        np.testing.assert_allclose(indexed[stored], views.task[modality], atol=1e-5)
    np.testing.assert_allclose(views.task["both"],
                               fuse(views.task["image"], views.task["text"], 0.7), atol=1e-7)
    assert views.fusion_weight == 0.7 and index.info.fusion_weight == 0.7


def test_eval_text_is_the_title_through_the_one_embedding_function(tiny_model_dir, few_listings):
    """A model whose composer writes more than the title: eval's text view is embed_listings with
    the model's composer reduced to the title; the fused view is fuse of the two."""
    model = load_model(tiny_model_dir)
    views = model_views("m", model, few_listings, listing_cache(model, few_listings, [], progress=False),
                        progress=False)
    emb = embed_listings(model, few_listings, title_composer(model), progress=False)
    for modality in ("image", "text", "both"):
        np.testing.assert_allclose(emb.modality(modality), views.task[modality], atol=1e-5)
    full = embed_listings(model, few_listings, progress=False)  # the model's composer: more than titles
    assert not np.allclose(full.text, emb.text, atol=1e-3)
    np.testing.assert_allclose(full.image, emb.image, atol=1e-6)


def test_the_fusion_weight_follows_the_modality_that_finds_the_catalog():
    rng = np.random.default_rng(1)
    groups = [f"g{i // 3}" for i in range(60)]
    truth = np.eye(20)[[i // 3 for i in range(60)]]
    signal = unit_rows(truth + 0.3 * rng.normal(size=truth.shape))
    noise = unit_rows(rng.normal(size=truth.shape))
    assert choose_fusion_weight(signal, noise, groups) >= 0.7
    assert choose_fusion_weight(noise, signal, groups) <= 0.3
    assert choose_fusion_weight(signal, signal, groups) == 0.5  # all equal: the neutral weight
    assert choose_fusion_weight(signal, noise, [f"own{i}" for i in range(60)]) == FUSION_WEIGHT


def test_one_rule_decides_a_model_s_fusion_weight(tiny_model_dir):
    from types import SimpleNamespace

    from eclip.encode import model_fusion_weight, resolve_fusion_weight

    rng = np.random.default_rng(2)
    groups = [f"g{i // 3}" for i in range(30)]
    truth = np.eye(10)[[i // 3 for i in range(30)]]
    signal = unit_rows(truth + 0.3 * rng.normal(size=truth.shape))
    noise = unit_rows(rng.normal(size=truth.shape))
    chosen = choose_fusion_weight(signal, noise, groups)
    # training: no model yet, the weight chosen on the validation vectors
    assert resolve_fusion_weight(None, signal, noise, groups) == (chosen, "chosen on val")
    # a trained model keeps its own, whatever the validation rows say
    trained = SimpleNamespace(config=SimpleNamespace(fusion_weight=0.3))
    assert resolve_fusion_weight(trained, signal, noise, groups) == (0.3, "the model's")
    assert model_fusion_weight(trained) == 0.3
    # towers before training: chosen where there are validation rows, else the default
    untrained = load_model(tiny_model_dir)
    untrained.config.fusion_weight = None
    assert resolve_fusion_weight(untrained, signal, noise, groups)[0] == chosen
    assert resolve_fusion_weight(untrained) == (FUSION_WEIGHT, "default")
    assert model_fusion_weight(untrained) == FUSION_WEIGHT
