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
from eclip.errors import ConfigError, EclipError

@pytest.fixture(scope="module")
def local_ray():
    """A local Ray on 2 CPUs for the module (the engine uses a running Ray as it is)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
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
            ray_bytes = (tmp_path / "ray" / name).read_bytes()
            assert ray_bytes == (tmp_path / "local" / name).read_bytes(), name
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


def test_without_ray_installed_the_error_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(EclipError, match=r"pip install 'eclip\[ray\]'"):
        require_ray()
    code = main(["prepare", "--engine", "ray", "--catalog", str(tmp_path / "c.jsonl"), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'eclip[ray]'" in err and len(err.strip().splitlines()) == 1


def test_ray_address_without_the_ray_engine_is_refused(tmp_path, capsys):
    code = main(["prepare", "--catalog", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o"),
                 "--ray-address", "auto"])
    assert code == 2 and "--engine ray" in capsys.readouterr().err


def test_ray_engine_refuses_a_file_as_its_output_folder(tmp_path, tiny_model_dir):
    from eclip.engines.embed import embed_with_ray

    (tmp_path / "emb.parquet").write_bytes(b"")
    with pytest.raises(EclipError, match="folder"):
        embed_with_ray(tiny_model_dir, [], tmp_path / "emb.parquet", progress=False)


def test_read_embeddings_joins_parts_in_manifest_order_and_names_a_bad_folder(tmp_path):
    from eclip.encode.fusion import fuse
    from eclip.encode.listings import Embeddings, write_embeddings, write_embeddings_manifest

    rng = np.random.default_rng(0)

    def part(ids):
        image = rng.standard_normal((len(ids), 4)).astype(np.float32)
        text = rng.standard_normal((len(ids), 4)).astype(np.float32)
        return Embeddings(ids, image, text, fuse(image, text, 0.5), 0.5)

    first, second = part(["a", "b", "c"]), part(["d", "e"])
    write_embeddings(first, tmp_path / "parts" / "part-000000.parquet")
    write_embeddings(second, tmp_path / "parts" / "part-000001.parquet")
    with pytest.raises(EclipError, match="manifest.json"):  # unfinished: no manifest yet
        read_embeddings(tmp_path / "parts")
    write_embeddings_manifest(tmp_path / "parts", [("part-000001.parquet", 2),
                                                   ("part-000000.parquet", 3)], 0.5)
    got, catalogs = read_embeddings(tmp_path / "parts")
    assert got.product_ids == ["d", "e", "a", "b", "c"] and catalogs is None
    np.testing.assert_array_equal(got.image, np.concatenate([second.image, first.image]))
    np.testing.assert_array_equal(got.product, np.concatenate([second.product, first.product]))
    write_embeddings_manifest(tmp_path / "parts", [("part-000000.parquet", 4)], 0.5)
    with pytest.raises(EclipError, match="part-000000.parquet holds 3 rows"):
        read_embeddings(tmp_path / "parts")
    write_embeddings_manifest(tmp_path / "parts", [("../elsewhere.parquet", 3)], 0.5)
    with pytest.raises(EclipError, match="not a file of"):
        read_embeddings(tmp_path / "parts")


def test_on_device_adapter_gives_embed_listings_the_same_vectors(tiny_catalog, tiny_model_dir):
    """What a GPU actor runs (inputs to the device, outputs back), here with the CPU as device:
    the adapter covers every call ``embed_listings`` makes and changes no number."""
    from eclip.catalog.readers import read_catalog
    from eclip.encode.listings import embed_listings
    from eclip.engines.embed import OnDevice
    from eclip.model import load_model

    listings = read_catalog(tiny_catalog).listings[:12]
    model = load_model(tiny_model_dir)
    want = embed_listings(model, listings, batch_size=5, progress=False)
    got = embed_listings(OnDevice(model, "cpu"), listings, batch_size=5, progress=False)
    assert got.product_ids == want.product_ids
    np.testing.assert_array_equal(got.product, want.product)


def test_pool_size_follows_cpus_and_gpus():
    from eclip.engines.ray_session import gpus_per_worker, pool_size

    class Cluster:
        def __init__(self, **resources):
            self.resources = resources

        def cluster_resources(self):
            return self.resources

    cpus, gpus = Cluster(CPU=16.0), Cluster(CPU=16.0, GPU=2.0)
    assert pool_size(cpus, None, 1) == 16 and pool_size(cpus, None, 3) == 5
    assert pool_size(gpus, None, 1, gpu=True) == 2 and pool_size(gpus, None, 1) == 16
    assert gpus_per_worker(gpus) == 1 and gpus_per_worker(cpus) == 0
    assert pool_size(cpus, 3, 1) == 3
    with pytest.raises(ConfigError, match="workers"):
        pool_size(cpus, 0, 1)


@pytest.mark.slow
@pytest.mark.distributed
def test_an_error_in_a_worker_is_one_line_naming_the_file(local_ray, tiny_catalog, tiny_model_dir,
                                                          tmp_path):
    """A photo that vanished after the catalog was read: the worker's eclip error, as one line."""
    import shutil
    from dataclasses import replace

    from eclip.catalog.readers import read_catalog
    from eclip.engines.embed import embed_with_ray

    listings = read_catalog(tiny_catalog).listings[:3]
    gone = tmp_path / "gone.jpg"
    shutil.copy(listings[1].images[0], gone)
    listings[1] = replace(listings[1], images=[str(gone)])
    gone.unlink()
    with pytest.raises(EclipError) as caught:
        embed_with_ray(tiny_model_dir, listings, tmp_path / "parts", workers=1, progress=False)
    message = str(caught.value)
    assert "gone.jpg" in message and "\n" not in message and "Traceback" not in message
    assert not (tmp_path / "parts" / "manifest.json").exists()


def test_an_unreachable_ray_address_is_one_line_at_once():
    import socket

    from eclip.engines.ray_session import check_reachable

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(EclipError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_reachable("head-without-port")
    with pytest.raises(ConfigError, match="Ray Client"):  # Ray Data fails through it
        check_reachable("ray://head:10001")
    check_reachable("auto")  # left to Ray
