"""Paths a catalog, a shard index or an index names (``eclip.catalog.paths``): every way out of the
image root, NUL bytes in a path; each case generated here and its outcome asserted.

An outcome is a clear one-line EclipError naming the file / row / field, or a reported bad row or
image (``CatalogRead.issues``, ``bad_rows.json``, a shard index's issues); never a traceback, never a
silent wrong result, and never a file outside the image root opened (a spy records every file the
image decoder opens). Cases that already held before issue 12 are kept here too, so that none is
lost.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from eclip.catalog.config import DataConfig
from eclip.catalog.images import check_image, load_image
from eclip.catalog.load import BAD_ROWS_FILE, load_catalog
from eclip.catalog.paths import PathOutsideRoot, contained
from eclip.catalog.readers import read_catalog
from eclip.catalog.schema import Listing
from eclip.catalog.shards import ShardIndex, prepare_shards
from eclip.cli import main
from eclip.errors import CatalogError, EclipError, ImageError

from files import assert_one_line, jsonl, no_file_outside, png

OUTSIDE = "outside the image root"


def _escape_cases(root: Path, outside: Path, monkeypatch) -> dict[str, str]:
    """The ways a catalog row can name ``outside/secret.png``: image path as written in the row."""
    (root / "link.png").symlink_to(outside / "secret.png")  # a file link pointing outside
    (root / "linked").symlink_to(outside, target_is_directory=True)  # a folder link
    monkeypatch.setenv("HOME", str(outside))
    return {
        "absolute": str(outside / "secret.png"),
        "dotdot": "../outside/secret.png",
        "deep_dotdot": "sub/" + "../" * 64 + str(outside.relative_to(outside.anchor)) + "/secret.png",
        "home": "~/secret.png",
        "file_symlink": "link.png",
        "folder_symlink": "linked/secret.png",
    }


# ---------------------------------------------------------------------------------------------
# 1. image paths that escape the image root


@pytest.mark.parametrize("case", ["absolute", "dotdot", "deep_dotdot", "home", "file_symlink",
                                  "folder_symlink"])
@pytest.mark.parametrize("check_images", [True, False])
def test_image_outside_the_root_is_a_reported_bad_image_never_opened(world, opened, monkeypatch,
                                                                      case, check_images):
    root, outside = world
    path = _escape_cases(root, outside, monkeypatch)[case]
    catalog = jsonl(root / "catalog.jsonl", [
        {"product_id": "only", "title": "escape only", "images": [path]},
        {"product_id": "mixed", "title": "escape and good", "images": [path, "good.png"]},
        {"product_id": "fine", "title": "good", "images": ["good.png"]},
    ])
    read = read_catalog(catalog, check_images=check_images)
    assert [x.product_id for x in read.listings] == ["mixed", "fine"]
    assert read.listings[0].images == [str(root / "good.png")]
    dropped = [i for i in read.issues if i.action == "dropped_image"]
    assert [(i.file, i.row, i.field, i.kind) for i in dropped] == [
        (str(catalog), 1, "images", OUTSIDE), (str(catalog), 2, "images", OUTSIDE)]
    [skipped] = [i for i in read.issues if i.action == "skipped_row"]
    assert (skipped.row, skipped.field) == (1, "images")
    assert OUTSIDE in read.summary()
    no_file_outside(opened, outside)


def test_inside_the_root_still_works_absolute_paths_links_and_the_default_root(world, opened):
    root, outside = world
    (root / "alias.png").symlink_to(root / "good.png")  # a link that stays inside
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    catalog = jsonl(root / "catalog.jsonl", [
        {"product_id": "a", "title": "relative", "images": ["good.png"]},
        {"product_id": "b", "title": "absolute inside", "images": [str(root / "good.png")]},
        {"product_id": "c", "title": "inner link", "images": ["alias.png"]},
        {"product_id": "d", "title": "inner folder link", "images": ["sub/up/good.png"]},
        {"product_id": "e", "title": "dot-dot that stays inside", "images": ["sub/../good.png"]},
    ])
    read = read_catalog(catalog)  # the default root: the catalog's own folder
    assert read.issues == [] and len(read.listings) == 5
    assert read.image_root == str(root.resolve())
    no_file_outside(opened, outside)


def test_an_explicit_image_root_is_the_only_root(tmp_path, opened):
    """With --image-root the catalog's own folder is no longer a place images may come from."""
    cats, root = tmp_path / "cats", tmp_path / "pics"
    png(root / "p.png")
    png(cats / "beside_the_catalog.png")
    catalog = jsonl(cats / "c.jsonl", [
        {"product_id": "a", "title": "in the root", "images": ["p.png"]},
        {"product_id": "b", "title": "next to the catalog", "images": [str(cats / "beside_the_catalog.png")]},
    ])
    read = read_catalog(catalog, image_root=root)
    assert [x.product_id for x in read.listings] == ["a"]
    assert {i.kind for i in read.issues} == {OUTSIDE, "no usable image"}
    no_file_outside(opened, cats)


def test_outside_image_in_strict_mode_is_an_error_naming_file_row_field(world, monkeypatch):
    root, outside = world
    path = _escape_cases(root, outside, monkeypatch)["folder_symlink"]
    catalog = jsonl(root / "c.jsonl", [{"title": "good", "images": ["good.png"]},
                                        {"title": "bad", "images": [path]}])
    with pytest.raises(CatalogError) as err:
        read_catalog(catalog, strict=True)
    assert (err.value.file, err.value.row, err.value.field) == (str(catalog), 2, "images")
    assert_one_line(err.value, str(catalog), "row 2", "'images'", OUTSIDE)


def test_outside_image_is_in_bad_rows_json(world, monkeypatch, tmp_path):
    root, outside = world
    path = _escape_cases(root, outside, monkeypatch)["dotdot"]
    catalog = jsonl(root / "c.jsonl", [{"title": "good", "images": ["good.png"]},
                                        {"title": "bad", "images": [path]}])
    read = load_catalog(DataConfig(catalog=str(catalog)), report_dir=tmp_path / "out",
                        log=lambda _: None)
    report = json.loads((tmp_path / "out" / BAD_ROWS_FILE).read_text(encoding="utf-8"))
    assert report["skipped_rows"] == 1 and report["dropped_images"] == 1 and len(read.listings) == 1
    dropped = [i for i in report["issues"] if i["action"] == "dropped_image"]
    assert dropped[0]["row"] == 2 and dropped[0]["field"] == "images"
    assert dropped[0]["reason"].startswith(OUTSIDE) and dropped[0]["file"] == str(catalog)


def test_cli_prepare_reports_the_outside_image_and_writes_the_others(world, opened, monkeypatch,
                                                                   tmp_path, capsys):
    root, outside = world
    path = _escape_cases(root, outside, monkeypatch)["file_symlink"]
    catalog = jsonl(root / "c.jsonl", [{"title": f"good {i}", "images": ["good.png"]}
                                        for i in range(3)] + [{"title": "bad", "images": [path]}])
    out = tmp_path / "shards"
    assert main(["prepare", "--catalog", str(catalog), "--out", str(out), "--image-size", "16",
                 "--quiet"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert sum(ShardIndex.load(out).splits.values()) == 3
    report = json.loads((out / BAD_ROWS_FILE).read_text(encoding="utf-8"))
    assert [i["reason"].split(": ")[0] for i in report["issues"]
            if i["action"] == "dropped_image"] == [OUTSIDE]
    no_file_outside(opened, outside)


def test_prepare_rechecks_the_root_when_a_link_appears_after_the_read(world, opened):
    """A file swapped for a link between the read and ``prepare`` is refused, not opened."""
    root, outside = world
    png(root / "swapped.png")
    catalog = jsonl(root / "c.jsonl", [{"product_id": "a", "title": "a", "images": ["good.png"]},
                                        {"product_id": "b", "title": "b", "images": ["swapped.png"]}])
    read = read_catalog(catalog)
    assert len(read.listings) == 2
    (root / "swapped.png").unlink()
    (root / "swapped.png").symlink_to(outside / "secret.png")
    opened.clear()
    index = json.loads(prepare_shards(read, root / "shards", image_size=16,
                                      progress=False).read_text(encoding="utf-8"))
    assert index["samples"] == 1
    assert [i["action"] for i in index["issues"]] == ["dropped_image", "skipped_listing"]
    assert OUTSIDE in index["issues"][0]["reason"]
    no_file_outside(opened, outside)


def test_load_image_and_check_image_refuse_a_path_outside_a_given_root(world, opened):
    root, outside = world
    (root / "link.png").symlink_to(outside / "secret.png")
    with pytest.raises(ImageError) as err:
        load_image(root / "link.png", root=root)
    assert_one_line(err.value, "link.png", OUTSIDE)
    assert check_image(root / "link.png", root=root).startswith(OUTSIDE)
    assert load_image(root / "good.png", root=root).size == (24, 20)
    no_file_outside(opened, outside)


def test_containment_function(world):
    root, outside = world
    (root / "link.png").symlink_to(outside / "secret.png")
    assert contained(root / "good.png", root) == (root / "good.png").resolve()
    assert contained(root / "nested" / ".." / "good.png", root) == (root / "good.png").resolve()
    for path in (outside / "secret.png", root / ".." / "outside" / "secret.png", root / "link.png",
                 "/etc/passwd"):
        with pytest.raises(PathOutsideRoot) as err:
            contained(path, root)
        assert err.value.kind == OUTSIDE
    with pytest.raises(PathOutsideRoot) as err:
        contained(str(root / "a\0b.png"), root)
    assert err.value.kind == "bad path" and "\\x00" in str(err.value)


def test_shard_index_naming_files_outside_its_folder_is_refused(world, tmp_path):
    root, outside = world
    read = read_catalog(jsonl(root / "c.jsonl", [{"title": "a", "images": ["good.png"]}]))
    out = tmp_path / "shards"
    index_path = prepare_shards(read, out, image_size=16, progress=False)
    data = json.loads(index_path.read_text(encoding="utf-8"))
    shutil.copy(out / data["shards"][0]["name"], outside / "elsewhere.tar")
    for name in ("../outside/elsewhere.tar", str(outside / "elsewhere.tar"), "", ".."):
        data["shards"][0]["name"] = name
        index_path.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(EclipError) as err:
            ShardIndex.load(out)
        assert_one_line(err.value, "not a valid shard index")
    data["shards"][0]["name"] = "evil.tar"
    (out / "evil.tar").symlink_to(outside / "elsewhere.tar")
    index_path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(EclipError) as err:
        ShardIndex.load(out)
    assert_one_line(err.value, "outside the shard folder")


def test_thumbnail_store_never_serves_a_planted_link(tmp_path):
    from eclip.search.thumbnails import ThumbnailStore

    store = ThumbnailStore(tmp_path / "index" / "images", size=16)
    name = store.put(png(tmp_path / "photo.png"))
    assert store.path(name) is not None
    secret = png(tmp_path / "outside" / "secret.png")
    target = store.root / name
    target.unlink()
    target.symlink_to(secret)
    assert store.path(name) is None  # a link to outside the store
    shutil.rmtree(target.parent)
    target.parent.symlink_to(tmp_path / "outside", target_is_directory=True)
    assert store.path(name) is None  # a folder link
    for hostile in ("../../outside/secret.png", "/etc/passwd", name + "\n", "ab/" + "0" * 40):
        assert store.path(hostile) is None


def test_api_image_route_serves_only_the_store(tmp_path, tiny_model_dir, world, monkeypatch):
    """End to end: a catalog with escaping rows is indexed without them; GET /images never serves a
    file outside the index, not even after a thumbnail is replaced by a link."""
    from fastapi.testclient import TestClient

    from eclip.search import build_index
    from eclip.search.api import create_app

    root, outside = world
    escapes = _escape_cases(root, outside, monkeypatch)
    rows = [{"product_id": f"g{i}", "title": f"good {i}", "images": ["good.png"]} for i in range(4)]
    rows += [{"product_id": case, "title": case, "images": [path]} for case, path in escapes.items()]
    read = read_catalog(jsonl(root / "c.jsonl", rows))
    assert [x.product_id for x in read.listings] == ["g0", "g1", "g2", "g3"]
    index = tmp_path / "index"
    build_index(tiny_model_dir, read.listings, index, progress=False)
    client = TestClient(create_app(index))
    assert client.get("/images/g0?n=0").status_code == 200
    for case in escapes:
        assert client.get(f"/images/{case}?n=0").status_code == 404
    for path in ("/images/..%2F..%2Foutside%2Fsecret.png", "/images/../../etc/passwd",
                 "/images/%2Fetc%2Fpasswd"):
        assert client.get(path).status_code == 404
    [thumb] = [p for p in (index / "images").glob("*/*.jpg")]
    thumb.unlink()
    Image.new("RGB", (8, 8)).save(outside / "planted.jpg")
    thumb.symlink_to(outside / "planted.jpg")
    assert client.get("/images/g0?n=0").status_code == 404


# ---------------------------------------------------------------------------------------------
# 2. NUL bytes in a path (deep JSON and long CSV cells: tests/test_readers.py)


def test_nul_byte_in_an_image_path_is_a_reported_bad_image(world, opened):
    root, outside = world
    catalog = jsonl(root / "c.jsonl", [
        {"product_id": "a", "title": "nul only", "images": ["bad\u0000.png"]},
        {"product_id": "b", "title": "nul and good", "images": ["good.png", "good\u0000.png"]},
    ])
    for check in (True, False):
        read = read_catalog(catalog, check_images=check)
        assert [x.product_id for x in read.listings] == ["b"]
        dropped = [i for i in read.issues if i.action == "dropped_image"]
        assert [(i.row, i.field, i.kind) for i in dropped] == [(1, "images", "bad path"),
                                                              (2, "images", "bad path")]
        assert all("\0" not in i.reason and "NUL" in i.reason for i in dropped)
        assert "\0" not in read.summary()


def test_nul_byte_in_a_csv_image_cell(tmp_path):
    png(tmp_path / "good.png")
    path = tmp_path / "c.csv"
    path.write_text("title,images\nfirst,good.png\nsecond,bad\x00.png\n", encoding="utf-8")
    read = read_catalog(path)
    assert len(read.listings) == 1
    assert {(i.row, i.field, i.kind) for i in read.issues} == {
        (2, "images", "bad path"), (2, "images", "no usable image")}


def test_nul_byte_everywhere_a_path_is_opened(tmp_path):
    with pytest.raises(ImageError) as err:
        load_image("a\0b.png")
    assert_one_line(err.value, "NUL", "a\\x00b.png")
    assert check_image("a\0b.png").startswith("bad path")
    good = png(tmp_path / "good.png")
    index = json.loads(prepare_shards(
        [Listing(product_id="p", title="t", images=["a\0b.png", str(good)]),
         Listing(product_id="q", title="t", images=["a\0b.png"])],
        tmp_path / "shards", image_size=16, progress=False).read_text(encoding="utf-8"))
    assert index["samples"] == 1
    assert sorted((i["product_id"], i["action"]) for i in index["issues"]) == [
        ("p", "dropped_image"), ("q", "dropped_image"), ("q", "skipped_listing")]
    assert all("NUL" in i["reason"] for i in index["issues"] if i["action"] == "dropped_image")
    with pytest.raises(CatalogError) as err:
        read_catalog(jsonl(tmp_path / "c.jsonl", [{"title": "t", "images": ["good.png"]}]),
                     image_root=str(tmp_path) + "\0")
    assert_one_line(err.value, "c.jsonl", "NUL")
