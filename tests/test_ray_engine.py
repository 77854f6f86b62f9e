"""The Ray engine of ``eclip embed`` and ``eclip prepare`` (issue 13, part 1) against the local one.

One local Ray on 2 CPUs serves the module. On a catalog with bad rows (a broken photo, a missing
photo, a missing title): the same vectors as the local engine, every product id once, the same
``bad_rows.json``; the same shard bytes and ``index.json``; and jobs whose worker dies mid-way (a
test-only crash: the actor that receives block N exits once) finish with nothing lost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from eclip.catalog.load import BAD_ROWS_FILE
from eclip.catalog.shards import INDEX_NAME
from eclip.cli import main
from eclip.encode.listings import read_embeddings
from eclip.engines.ray_session import CRASH_ENV, require_ray
from eclip.errors import EclipError

@pytest.fixture(scope="module")
def local_ray():
    """A local Ray on 2 CPUs for the module (the engine uses a running Ray as it is)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def bad_catalog(tmp_path_factory):
    """A 40-listing demo catalog plus rows the reader reports: a photo that is not an image (its
    row has another, good photo), a row whose only photo is missing, one without a title, and a
    listing whose only photo is broken (prepare reads without checking, so it reports it itself)."""
    from eclip.catalog.demo import make_demo_catalog

    root = tmp_path_factory.mktemp("ray_catalog")
    path = make_demo_catalog(root, n_listings=40, seed=5, image_size=32, progress=False)
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows[3]["images"] = [rows[3]["images"][0], "images/broken.jpg"]
    rows.append({**rows[0], "product_id": "x-missing", "images": ["images/nope.jpg"]})
    rows.append({**rows[1], "product_id": "x-untitled", "title": ""})
    rows.append({**rows[2], "product_id": "x-broken", "images": ["images/broken.jpg"]})
    bad = root / "shop.jsonl"
    bad.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    return bad


def _embed(engine: str, model_dir, catalog, out, *extra: str) -> None:
    assert main(["embed", "--engine", engine, "--model", str(model_dir), "--catalog",
                 str(catalog), "--out", str(out), "--quiet", *extra]) == 0


def _same_report(a: Path, b: Path) -> None:
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    assert left == right and left["issues"]


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.distributed
def test_embed_on_ray_gives_the_local_vectors_ids_and_bad_rows_though_a_worker_dies(
        local_ray, bad_catalog, tiny_model_dir, tmp_path, monkeypatch):
    _embed("local", tiny_model_dir, bad_catalog, tmp_path / "local" / "emb.parquet")
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, f"{marker}:2")  # the actor that takes block 2 dies, once
    _embed("ray", tiny_model_dir, bad_catalog, tmp_path / "ray", "--block-size", "6")
    assert marker.exists()
    local, local_catalogs = read_embeddings(tmp_path / "local" / "emb.parquet")
    parts, part_catalogs = read_embeddings(tmp_path / "ray")
    # every product id once, in the catalog's order; the 3 bad rows skipped by both
    assert parts.product_ids == local.product_ids and part_catalogs == local_catalogs
    assert len(set(parts.product_ids)) == len(parts.product_ids) == 40
    for name in ("image", "text", "both"):
        np.testing.assert_allclose(parts.modality(name), local.modality(name), rtol=0, atol=1e-6)
    assert parts.fusion_weight == local.fusion_weight
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert [(p["name"], p["rows"]) for p in manifest["parts"]] == \
        [(f"part-{k:06d}.parquet", 6) for k in range(6)] + [("part-000006.parquet", 4)]
    # nothing else in the folder: no temporary part of the dead worker
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(
        [p["name"] for p in manifest["parts"]] + ["manifest.json", BAD_ROWS_FILE])
    _same_report(tmp_path / "local" / BAD_ROWS_FILE, tmp_path / "ray" / BAD_ROWS_FILE)
    skipped = {i["product_id"] for i in
               json.loads((tmp_path / "ray" / BAD_ROWS_FILE).read_text())["issues"]}
    assert {"x-missing", "x-untitled", "x-broken"} <= skipped


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.distributed
def test_prepare_on_ray_writes_the_local_shards_byte_for_byte_though_a_worker_dies(
        local_ray, bad_catalog, tmp_path, monkeypatch):
    common = ["--catalog", str(bad_catalog), "--shard-size", "7", "--image-size", "16",
              "--quiet"]
    assert main(["prepare", "--out", str(tmp_path / "local"), *common]) == 0
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, f"{marker}:1")
    assert main(["prepare", "--engine", "ray", "--block-size", "6", "--out",
                 str(tmp_path / "ray"), *common]) == 0
    assert marker.exists()
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ray").iterdir())
    assert INDEX_NAME in names and BAD_ROWS_FILE in names and len(names) > 4
    for name in names:
        if name != BAD_ROWS_FILE:
            assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    _same_report(tmp_path / "local" / BAD_ROWS_FILE, tmp_path / "ray" / BAD_ROWS_FILE)
    index = json.loads((tmp_path / "ray" / INDEX_NAME).read_text())
    # read without checking images, so prepare finds them: rows[3]'s second photo, and the only
    # photos of x-missing and x-broken (those two listings skipped)
    assert index["skipped"]["undecodable_images"] == 3
    assert index["skipped"]["listings_without_images"] == 2

    from eclip.catalog.images import ImageTransform
    from eclip.train.stream import ShardStream

    transform = ImageTransform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=False)
    ids = [s["index"] for s in ShardStream(tmp_path / "ray", transform=transform, train=False)]
    assert ids == list(range(index["samples"]))  # training reads Ray-prepared shards unchanged


def test_without_ray_installed_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(EclipError, match=r"pip install 'eclip\[ray\]'"):
        require_ray()


def test_ray_address_without_the_ray_engine_is_refused(tmp_path, capsys):
    code = main(["prepare", "--catalog", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o"),
                 "--ray-address", "auto"])
    assert code == 2 and "--engine ray" in capsys.readouterr().err


def test_ray_engine_refuses_a_file_as_its_output_folder(tmp_path, tiny_model_dir):
    from eclip.engines.embed import embed_with_ray

    (tmp_path / "emb.parquet").write_bytes(b"")
    with pytest.raises(EclipError, match="folder"):
        embed_with_ray(tiny_model_dir, [], tmp_path / "emb.parquet", progress=False)
