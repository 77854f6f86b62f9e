"""The hostile-input corpus (issue 12): every case is generated here and its outcome asserted.

An outcome is a clear one-line EclipError naming the file / row / field, or a reported bad row or
image (``CatalogRead.issues``, ``bad_rows.json``, a shard index's issues); never a traceback, never a
silent wrong result, and never a file outside the image root opened (a spy records every file the
image decoder opens). Cases that already held before issue 12 are kept here too, so that none is
lost.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

import eclip.catalog.images as images_module
from eclip.catalog.config import DataConfig
from eclip.catalog.images import check_image, load_image
from eclip.catalog.load import BAD_ROWS_FILE, load_catalog
from eclip.catalog.paths import PathOutsideRoot, contained
from eclip.catalog.readers import CatalogRead, read_catalog
from eclip.catalog.schema import Listing
from eclip.catalog.shards import ShardIndex, prepare_shards
from eclip.cli import main
from eclip.errors import CatalogError, ConfigError, EclipError, ImageError, ModelError
from eclip.train.recipe import TrainConfig, load_recipe

OUTSIDE = "outside the image root"


# ---------------------------------------------------------------------------------------------
# helpers


def _png(path: Path, colour=(200, 30, 30), size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def world(tmp_path):
    """``root``: the catalog's folder (the image root) with ``good.png``; ``outside``: a folder next
    to it with ``secret.png``, a perfectly decodable image that must never be opened."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    _png(root / "good.png")
    _png(outside / "secret.png", colour=(1, 2, 3))
    return root, outside


@pytest.fixture
def opened(monkeypatch):
    """Every path the image decoder opens (``open`` as the images module sees it)."""
    seen: list[str] = []
    real_open = open

    def spy(file, *args, **kwargs):
        seen.append(os.path.realpath(os.fspath(file)))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(images_module, "open", spy, raising=False)
    return seen


def _no_file_outside(opened: list[str], outside: Path) -> None:
    bad = [p for p in opened if Path(p).is_relative_to(outside.resolve())]
    assert not bad, f"opened outside the image root: {bad}"


def _assert_one_line(exc: BaseException, *parts: str) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    for part in parts:
        assert part in text, (part, text)
    return text


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
    catalog = _jsonl(root / "catalog.jsonl", [
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
    _no_file_outside(opened, outside)


def test_inside_the_root_still_works_absolute_paths_links_and_the_default_root(world, opened):
    root, outside = world
    (root / "alias.png").symlink_to(root / "good.png")  # a link that stays inside
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    catalog = _jsonl(root / "catalog.jsonl", [
        {"product_id": "a", "title": "relative", "images": ["good.png"]},
        {"product_id": "b", "title": "absolute inside", "images": [str(root / "good.png")]},
        {"product_id": "c", "title": "inner link", "images": ["alias.png"]},
        {"product_id": "d", "title": "inner folder link", "images": ["sub/up/good.png"]},
        {"product_id": "e", "title": "dot-dot that stays inside", "images": ["sub/../good.png"]},
    ])
    read = read_catalog(catalog)  # the default root: the catalog's own folder
    assert read.issues == [] and len(read.listings) == 5
    assert read.image_root == str(root.resolve())
    _no_file_outside(opened, outside)


def test_an_explicit_image_root_is_the_only_root(tmp_path, opened):
    """With --image-root the catalog's own folder is no longer a place images may come from."""
    cats, root = tmp_path / "cats", tmp_path / "pics"
    _png(root / "p.png")
    _png(cats / "beside_the_catalog.png")
    catalog = _jsonl(cats / "c.jsonl", [
        {"product_id": "a", "title": "in the root", "images": ["p.png"]},
        {"product_id": "b", "title": "next to the catalog", "images": [str(cats / "beside_the_catalog.png")]},
    ])
    read = read_catalog(catalog, image_root=root)
    assert [x.product_id for x in read.listings] == ["a"]
    assert {i.kind for i in read.issues} == {OUTSIDE, "no usable image"}
    _no_file_outside(opened, cats)


def test_outside_image_in_strict_mode_is_an_error_naming_file_row_field(world, monkeypatch):
    root, outside = world
    path = _escape_cases(root, outside, monkeypatch)["folder_symlink"]
    catalog = _jsonl(root / "c.jsonl", [{"title": "good", "images": ["good.png"]},
                                        {"title": "bad", "images": [path]}])
    with pytest.raises(CatalogError) as err:
        read_catalog(catalog, strict=True)
    assert (err.value.file, err.value.row, err.value.field) == (str(catalog), 2, "images")
    _assert_one_line(err.value, str(catalog), "row 2", "'images'", OUTSIDE)


def test_outside_image_is_in_bad_rows_json(world, monkeypatch, tmp_path):
    root, outside = world
    path = _escape_cases(root, outside, monkeypatch)["dotdot"]
    catalog = _jsonl(root / "c.jsonl", [{"title": "good", "images": ["good.png"]},
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
    catalog = _jsonl(root / "c.jsonl", [{"title": f"good {i}", "images": ["good.png"]}
                                        for i in range(3)] + [{"title": "bad", "images": [path]}])
    out = tmp_path / "shards"
    assert main(["prepare", "--catalog", str(catalog), "--out", str(out), "--image-size", "16",
                 "--quiet"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert sum(ShardIndex.load(out).splits.values()) == 3
    report = json.loads((out / BAD_ROWS_FILE).read_text(encoding="utf-8"))
    assert [i["reason"].split(": ")[0] for i in report["issues"]
            if i["action"] == "dropped_image"] == [OUTSIDE]
    _no_file_outside(opened, outside)


def test_prepare_rechecks_the_root_when_a_link_appears_after_the_read(world, opened):
    """A file swapped for a link between the read and ``prepare`` is refused, not opened."""
    root, outside = world
    _png(root / "swapped.png")
    catalog = _jsonl(root / "c.jsonl", [{"product_id": "a", "title": "a", "images": ["good.png"]},
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
    _no_file_outside(opened, outside)


def test_load_image_and_check_image_refuse_a_path_outside_a_given_root(world, opened):
    root, outside = world
    (root / "link.png").symlink_to(outside / "secret.png")
    with pytest.raises(ImageError) as err:
        load_image(root / "link.png", root=root)
    _assert_one_line(err.value, "link.png", OUTSIDE)
    assert check_image(root / "link.png", root=root).startswith(OUTSIDE)
    assert load_image(root / "good.png", root=root).size == (24, 20)
    _no_file_outside(opened, outside)


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
    read = read_catalog(_jsonl(root / "c.jsonl", [{"title": "a", "images": ["good.png"]}]))
    out = tmp_path / "shards"
    index_path = prepare_shards(read, out, image_size=16, progress=False)
    data = json.loads(index_path.read_text(encoding="utf-8"))
    shutil.copy(out / data["shards"][0]["name"], outside / "elsewhere.tar")
    for name in ("../outside/elsewhere.tar", str(outside / "elsewhere.tar"), "", ".."):
        data["shards"][0]["name"] = name
        index_path.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(EclipError) as err:
            ShardIndex.load(out)
        _assert_one_line(err.value, "not a valid shard index")
    data["shards"][0]["name"] = "evil.tar"
    (out / "evil.tar").symlink_to(outside / "elsewhere.tar")
    index_path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(EclipError) as err:
        ShardIndex.load(out)
    _assert_one_line(err.value, "outside the shard folder")


def test_thumbnail_store_never_serves_a_planted_link(tmp_path):
    from eclip.search.thumbnails import ThumbnailStore

    store = ThumbnailStore(tmp_path / "index" / "images", size=16)
    name = store.put(_png(tmp_path / "photo.png"))
    assert store.path(name) is not None
    secret = _png(tmp_path / "outside" / "secret.png")
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
    read = read_catalog(_jsonl(root / "c.jsonl", rows))
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
# 3. crashes: NUL bytes, deep JSON, long CSV cells


def test_nul_byte_in_an_image_path_is_a_reported_bad_image(world, opened):
    root, outside = world
    catalog = _jsonl(root / "c.jsonl", [
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
    _png(tmp_path / "good.png")
    path = tmp_path / "c.csv"
    path.write_text("title,images\nfirst,good.png\nsecond,bad\x00.png\n", encoding="utf-8")
    read = read_catalog(path)
    assert len(read.listings) == 1
    assert {(i.row, i.field, i.kind) for i in read.issues} == {
        (2, "images", "bad path"), (2, "images", "no usable image")}


def test_nul_byte_everywhere_a_path_is_opened(tmp_path):
    with pytest.raises(ImageError) as err:
        load_image("a\0b.png")
    _assert_one_line(err.value, "NUL", "a\\x00b.png")
    assert check_image("a\0b.png").startswith("bad path")
    good = _png(tmp_path / "good.png")
    index = json.loads(prepare_shards(
        [Listing(product_id="p", title="t", images=["a\0b.png", str(good)]),
         Listing(product_id="q", title="t", images=["a\0b.png"])],
        tmp_path / "shards", image_size=16, progress=False).read_text(encoding="utf-8"))
    assert index["samples"] == 1
    assert sorted((i["product_id"], i["action"]) for i in index["issues"]) == [
        ("p", "dropped_image"), ("q", "dropped_image"), ("q", "skipped_listing")]
    assert all("NUL" in i["reason"] for i in index["issues"] if i["action"] == "dropped_image")
    with pytest.raises(CatalogError) as err:
        read_catalog(_jsonl(tmp_path / "c.jsonl", [{"title": "t", "images": ["good.png"]}]),
                     image_root=str(tmp_path) + "\0")
    _assert_one_line(err.value, "c.jsonl", "NUL")


DEEP = 100_000


def test_deeply_nested_jsonl_line_is_a_reported_bad_row(world):
    root, _ = world
    catalog = root / "c.jsonl"
    catalog.write_text(json.dumps({"title": "ok", "images": ["good.png"]}) + "\n"
                       + '{"title": "deep", "images": ["good.png"], "attributes": '
                       + "[" * DEEP + "]" * DEEP + "}\n"
                       + "[" * DEEP + "\n"
                       + json.dumps({"title": "ok too", "images": ["good.png"]}) + "\n",
                       encoding="utf-8")
    read = read_catalog(catalog)
    assert [x.title for x in read.listings] == ["ok", "ok too"]
    assert [(i.file, i.row, i.action) for i in read.issues] == [
        (str(catalog), 2, "skipped_row"), (str(catalog), 3, "skipped_row")]
    assert all("nested too deeply" in i.reason for i in read.issues)


def test_deeply_nested_json_catalog_is_a_catalog_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("[" * DEEP + "]" * DEEP, encoding="utf-8")
    with pytest.raises(CatalogError) as err:
        read_catalog(path)
    _assert_one_line(err.value, str(path), "nested too deeply")


def test_deeply_nested_json_in_csv_cells_is_a_reported_bad_row(tmp_path):
    _png(tmp_path / "good.png")
    path = tmp_path / "c.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["title", "images", "attributes"])
        writer.writerow(["ok", "good.png", "colour:red"])
        writer.writerow(["deep attributes", "good.png", "[" * 50_000])
        writer.writerow(["deep images", "[" * 50_000, ""])
    read = read_catalog(path)
    assert [x.title for x in read.listings] == ["ok"]
    assert [(i.row, i.field) for i in read.issues] == [(2, "attributes"), (3, "images")]
    assert all("nested too deeply" in i.reason for i in read.issues)


def test_csv_cell_longer_than_the_csv_default_limit_is_read(tmp_path):
    _png(tmp_path / "good.png")
    limit = csv.field_size_limit()
    long_title = "x" * 200_000
    path = tmp_path / "c.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["title", "images"])
        writer.writerow([long_title, "good.png"])
        writer.writerow(["short", "good.png"])
    read = read_catalog(path)
    assert [len(x.title) for x in read.listings] == [200_000, 5] and read.issues == []
    assert csv.field_size_limit() == limit  # the process-wide setting is left as it was


# ---------------------------------------------------------------------------------------------
# 2. options: every numeric range, checked in one place


BAD_OPTIONS = [
    ("train.grad_clip=-1", "> 0"), ("train.grad_clip=0", "> 0"),
    ("train.checkpoint_every=0", ">= 1"), ("train.log_every=0", ">= 1"),
    ("train.lr=-1", "> 0"), ("train.lr=0", "> 0"), ("train.lr=.nan", "> 0"), ("train.lr=.inf", "> 0"),
    ("train.num_workers=-1", ">= 0"), ("train.epochs=-1", ">= 0"), ("train.batch_size=0", ">= 1"),
    ("train.warmup_steps=-5", ">= 0"), ("train.min_lr_ratio=1.5", "in [0, 1]"),
    ("train.min_lr_ratio=-0.1", "in [0, 1]"), ("train.weight_decay=-0.1", ">= 0"),
    ("train.per_group=0", ">= 1"), ("train.max_steps=-1", ">= 0"), ("train.eval_batch_size=0", ">= 1"),
    ("train.micro_batch_size=0", ">= 1"), ("train.loss_chunk_size=0", ">= 1"),
    ("train.tower_lr_scale=-1", ">= 0"), ("train.image_lr_scale=-1", ">= 0"),
    ("train.text_text_weight=-1", ">= 0"), ("train.image_trainable_blocks=-1", ">= 0"),
    ("train.seed=-1", ">= 0"),
    ("data.val_fraction=1", "in [0, 1)"), ("data.val_fraction=-0.1", "in [0, 1)"),
    ("data.shuffle_buffer=-1", ">= 0"), ("data.max_pixels=0", ">= 1"), ("train.threads=0", ">= 1"),
]


@pytest.mark.parametrize("override,allowed", BAD_OPTIONS, ids=[o for o, _ in BAD_OPTIONS])
def test_numeric_option_out_of_range_is_a_config_error_naming_key_and_range(override, allowed):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [override])
    _assert_one_line(err.value, key, allowed)


@pytest.mark.parametrize("override", ["train.grad_clip=.inf", "train.max_steps=null",
                                      "train.image_lr_scale=null", "data.val_fraction=0",
                                      "train.min_lr_ratio=0", "train.min_lr_ratio=1",
                                      "train.epochs=0", "train.num_workers=0", "train.warmup_steps=0",
                                      "train.max_steps=0", "train.threads=null"])
def test_edge_values_inside_the_ranges_are_accepted(override):
    load_recipe(None, [override])


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"train\.grad_clip"):
        TrainConfig(grad_clip=-1.0)
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        DataConfig(val_fraction=1.0)


def test_cli_rejects_a_bad_option_with_one_line(world, tmp_path, capsys):
    root, _ = world
    catalog = _jsonl(root / "c.jsonl", [{"title": "t", "images": ["good.png"]}])
    code = main(["train", "--catalog", str(catalog), "--output-dir", str(tmp_path / "run"),
                 "train.grad_clip=-1"])
    err = capsys.readouterr().err
    assert code == 2 and "train.grad_clip" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_recipe_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes("train:\n  lr: 1.0e-4  # caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    _assert_one_line(err.value, str(path), "UTF-8")


def test_absurd_image_size_is_a_config_error():
    from eclip.model import DualEncoderConfig, load_model

    for key in ("image_size", "image_resize_size"):
        with pytest.raises(ConfigError) as err:
            DualEncoderConfig(**{key: 100_000})
        _assert_one_line(err.value, f"model.{key}", "4096")


def test_max_length_beyond_the_text_models_positions_fails_at_build(tiny_model_dir, tiny_catalog,
                                                                   tmp_path):
    from conftest import TINY_MODEL

    from eclip.model import DualEncoder, DualEncoderConfig, load_model
    from eclip.train.recipe import Recipe
    from eclip.train.run import build_model

    listings = read_catalog(tiny_catalog).listings[:30]
    with pytest.raises(ConfigError) as err:  # scratch tower: 512 positions
        build_model(Recipe(model={**TINY_MODEL, "max_length": 600}), listings)
    _assert_one_line(err.value, "model.max_length=600", "512")
    hf = DualEncoderConfig(text_tower="hf", max_length=1000, image_tower="vit", image_size=32,
                           pretrained=False, embed_dim=16)
    with pytest.raises(ConfigError) as err:  # the bundled MiniLM (BERT): 512 positions
        DualEncoder.build(hf)
    _assert_one_line(err.value, "model.max_length=1000", "512")
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    config = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    config["max_length"] = 600
    (copy / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelError) as err:  # a model directory's config.json
        load_model(copy)
    _assert_one_line(err.value, "config.json", "model.max_length=600")


def test_catalogread_keeps_its_old_positional_form():
    read = CatalogRead("c.jsonl", [], [], 0)
    assert read.image_root is None
