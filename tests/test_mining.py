"""Catalogs mined from vectors (eclip/mining/): exact groups on constructed duplicates, no merge of
a look-alike, the size cap, thresholds calibrated on given ids, the command and training on them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from eclip.catalog.config import MiningConfig
from eclip.catalog.schema import Listing
from eclip.errors import ConfigError
from eclip.mining.graph import capped_groups, group_pairs
from eclip.mining.mine import MINED_PREFIX, group_listings, hide_catalog_ids
from eclip.mining.thresholds import edge_precision

DIM = 32


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def constructed(products: int = 12, per: int = 3, noise: float = 0.05, seed: int = 0):
    """``per`` listings of each product (a product's photos and titles differ by ``noise``), the
    products spread over two categories; plus product ``lookalike`` whose photo is product 0's
    but whose title is another."""
    rng = np.random.default_rng(seed)
    image_centres = rng.normal(size=(products, DIM))
    text_centres = rng.normal(size=(products, DIM))
    listings, image, text = [], [], []
    for p in range(products):
        for k in range(per):
            listings.append(Listing(product_id=f"p{p}-{k}", title=f"t{p}", images=["x.jpg"],
                                    catalog_id=f"c{p}", category="A" if p % 2 else "B"))
            image.append(image_centres[p] + noise * rng.normal(size=DIM))
            text.append(text_centres[p] + noise * rng.normal(size=DIM))
    # the look-alike: the same picture as product 0 (same category), a different title
    listings.append(Listing(product_id="look", title="other", images=["x.jpg"],
                            catalog_id="c-look", category="B"))
    image.append(image_centres[0] + noise * rng.normal(size=DIM))
    text.append(-text_centres[0] + noise * rng.normal(size=DIM))
    image, text = unit(np.array(image)), unit(np.array(text))
    joint = unit(np.concatenate([image, text], axis=1))
    return listings, image, text, joint


def test_mining_recovers_constructed_duplicates_and_leaves_the_lookalike_alone():
    listings, image, text, joint = constructed()
    result = group_listings(image, text, joint, listings, MiningConfig(neighbours=5),
                            log=lambda _: None)
    mined = [x.catalog_id for x in result.listings]
    by_truth: dict[str, set] = {}
    for x, m in zip(listings, mined):
        by_truth.setdefault(x.catalog_id, set()).add(m)
    for true_id, ids in by_truth.items():
        if true_id == "c-look":
            assert ids == {None}  # never merged into product 0's catalog
        else:
            assert len(ids) == 1 and None not in ids  # one mined catalog per product
    assert len({m for m in mined if m}) == 12 and all(m.startswith(MINED_PREFIX) for m in mined if m)
    scores = result.report["against_true_ids"]  # "mined" scores against the ids it ignored
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0
    assert result.sources.count("mined") == 36 and result.sources.count(None) == 1


def test_groups_never_pass_the_size_cap():
    listings, image, text, joint = constructed(products=4, per=6)
    result = group_listings(image, text, joint, listings,
                            MiningConfig(neighbours=8, max_group_size=4), log=lambda _: None)
    sizes = {}
    for x in result.listings:
        if x.catalog_id:
            sizes[x.catalog_id] = sizes.get(x.catalog_id, 0) + 1
    assert sizes and max(sizes.values()) <= 4
    # every mined pair is a true pair: a capped group is cut from one product, never two
    assert result.report["against_true_ids"]["precision"] == 1.0


def test_capped_groups_refuse_to_join_two_given_catalogs():
    # 0-1 and 2-3 are given catalogs a and b; the strongest edge bridges them through row 4
    left, right = np.array([1, 2, 0]), np.array([4, 4, 1])
    score = np.array([0.9, 0.8, 0.5])
    groups = capped_groups(5, left, right, score, max_group_size=10,
                           given=["a", "a", "b", "b", None])
    assert groups[4] == groups[1] and groups[2] != groups[4]
    # a given catalog is one group even where no edge joins its rows (2-3)
    assert group_pairs(groups) == {(0, 1), (0, 4), (1, 4), (2, 3)}


def test_a_given_catalog_counts_whole_toward_the_size_cap():
    # rows 0 and 1 are given catalog a (no edge between them); unlabelled rows 2 and 3 each touch
    # one of them. Cut per edge, each would make a group of 2 and a's catalog 4 listings after the
    # ids pass on; counted whole, a takes only the stronger (row 3) under a cap of 3.
    left, right = np.array([0, 1]), np.array([2, 3])
    score = np.array([0.6, 0.9])
    groups = capped_groups(4, left, right, score, max_group_size=3, given=["a", "a", None, None])
    assert group_pairs(groups) == {(0, 1), (0, 3), (1, 3)}
    # a given catalog already past the cap keeps its rows and takes no other
    groups = capped_groups(4, left, right, score, max_group_size=1, given=["a", "a", None, None])
    assert group_pairs(groups) == {(0, 1)}


def calibration_case(seed: int = 1):
    """Products whose listings range from near copies to loose ones, and look-alike products
    (another product's photo, a title close to its title) at every level of similarity."""
    rng = np.random.default_rng(seed)
    listings, image, text = [], [], []
    for p in range(120):
        ic, tc = rng.normal(size=DIM), rng.normal(size=DIM)
        if p % 3 == 2:  # a look-alike of the product before it: a similar photo and title
            ic = image_centre + rng.uniform(0.3, 1.2) * rng.normal(size=DIM)
            tc = text_centre + rng.uniform(0.3, 1.2) * rng.normal(size=DIM)
        image_centre, text_centre = ic, tc
        noise = rng.uniform(0.1, 0.9)
        for k in range(3):
            listings.append(Listing(product_id=f"p{p}-{k}", title="t", images=["x.jpg"],
                                    catalog_id=f"c{p}", category=f"cat{p % 4}"))
            image.append(ic + noise * rng.normal(size=DIM))
            text.append(tc + noise * rng.normal(size=DIM))
    image, text = unit(np.array(image)), unit(np.array(text))
    return listings, image, text, unit(np.concatenate([image, text], axis=1))


def test_thresholds_calibrated_on_given_ids_reach_the_target_on_held_out_ids():
    listings, image, text, joint = calibration_case()
    truth = [x.catalog_id for x in listings]
    # half of the products keep their ids (calibration), the other half's are held out
    calibration = {f"c{p}" for p in range(0, 120, 2)}
    shown = hide_catalog_ids(listings, 1.0)
    shown = [x if x.catalog_id in calibration else Listing(**{**x.to_dict(), "catalog_id": None})
             for x in shown]
    target = 0.95
    result = group_listings(image, text, joint, shown,
                            MiningConfig(neighbours=6, target_precision=target),
                            source="given+mined", log=lambda _: None)
    assert "calibrated" in result.thresholds.rule
    # the candidate edges that pass, scored on the held-out products only
    from eclip.mining.graph import blocks_of, mutual_candidates

    candidates = mutual_candidates(joint, image, text, blocks_of([x.category for x in listings]), 6)
    mask = candidates.passing(result.thresholds.image, result.thresholds.text)
    held_out = [t if t not in calibration else None for t in truth]
    precision, right, measured = edge_precision(candidates, mask, held_out)
    assert measured >= 20 and precision >= target - 0.03, (precision, measured)
    # and the label-free rule alone is looser here: calibration did something
    loose = group_listings(image, text, joint, listings, MiningConfig(neighbours=6),
                           log=lambda _: None)
    assert loose.thresholds.rule != result.thresholds.rule
    # the given ids are kept as they were
    kept = [x.catalog_id for x in result.listings if x.catalog_id in calibration]
    assert len(kept) == sum(1 for x in shown if x.catalog_id)


def test_hidden_ids_keep_a_stable_share_of_catalogs():
    listings, *_ = calibration_case()
    kept = hide_catalog_ids(listings, 0.3)
    share = len({x.catalog_id for x in kept if x.catalog_id}) / 120
    assert 0.15 < share < 0.45
    assert [x.catalog_id for x in kept] == [x.catalog_id for x in hide_catalog_ids(listings, 0.3)]
    assert all(x.catalog_id is None for x in hide_catalog_ids(listings))


def test_mining_settings_are_checked():
    with pytest.raises(ConfigError, match="data.mining.max_group_size"):
        MiningConfig(max_group_size=1)
    listings, image, text, joint = constructed(products=2)
    with pytest.raises(ConfigError, match="mined"):
        group_listings(image, text, joint, listings, source="given")


@pytest.mark.e2e
def test_mine_catalogs_command_writes_catalog_and_report(tiny_catalog, tiny_model_dir, tmp_path):
    out = tmp_path / "mined.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "eclip", "mine-catalogs", "--model", str(tiny_model_dir),
         "--catalog", str(tiny_catalog), "--out", str(out), "--quiet", "--threads", "1",
         "data.mining.neighbours=4"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 120 and all("catalog_source" in r for r in rows)
    assert {r["catalog_source"] for r in rows} <= {"mined", None}
    assert all((r["catalog_id"] or "").startswith(MINED_PREFIX) == (r["catalog_source"] == "mined")
               for r in rows)
    report = json.loads((tmp_path / "mined.jsonl.mining.json").read_text(encoding="utf-8"))
    assert report["listings"] == 120 and "against_true_ids" in report
    assert "<img" in (tmp_path / "mined.jsonl.mining.html").read_text(encoding="utf-8")
    # the mined catalog reads back (image paths relative to the catalog's folder)
    from eclip.catalog.readers import read_catalog

    back = read_catalog(out, image_root=tiny_catalog.parent, check_images=False)
    assert len(back.listings) == 120
    # the catalog being read is never overwritten
    again = subprocess.run(
        [sys.executable, "-m", "eclip", "mine-catalogs", "--model", str(tiny_model_dir),
         "--catalog", str(out), "--image-root", str(tiny_catalog.parent), "--out", str(out),
         "--quiet"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "another file" in again.stderr


def test_training_on_mined_catalogs(tiny_catalog, tiny_model_config, tmp_path, one_thread):
    from eclip.catalog.readers import read_catalog
    from eclip.train.recipe import Recipe
    from eclip.train.run import build_model
    from eclip.train.trainer import train

    listings = read_catalog(tiny_catalog).listings
    train_rows = [x for x in listings if x.split != "test"]
    recipe = Recipe(model=dict(tiny_model_config))
    recipe.data.catalog_source = "mined"
    recipe.data.mining = MiningConfig(neighbours=4, rounds=2)
    recipe.train.output_dir = str(tmp_path / "run")
    recipe.train.epochs = 1
    recipe.train.batch_size = 16
    recipe.train.progress = False
    model = build_model(recipe, train_rows)
    result = train(recipe, model, train_rows, log=lambda _: None)
    assert result.steps > 0
    reports = [json.loads((tmp_path / "run" / name).read_text(encoding="utf-8"))
               for name in ("mining_round1.json", "mining.json")]
    assert all(r["listings"] == len(train_rows) and "against_true_ids" in r for r in reports)
    assert (tmp_path / "run" / "round1" / "model" / "config.json").is_file()
