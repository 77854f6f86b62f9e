"""Reading catalogs (JSONL, JSON, CSV/TSV, Parquet) into listings, with every bad row reported."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import eclip.catalog.readers as readers
from eclip.catalog.readers import CatalogRead, Issue, read_catalog, write_listings
from eclip.catalog.schema import Listing
from eclip.cli import main
from eclip.errors import CatalogError

from files import assert_one_line, png


@pytest.fixture
def images(tmp_path) -> Path:
    """tmp_path/img with good a.jpg, b.jpg, c.png, a corrupt bad.jpg and a truncated cut.jpg."""
    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "c.png"):
        Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8)).save(folder / name)
    (folder / "bad.jpg").write_bytes(b"this is not a jpeg at all")
    data = (folder / "a.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    return folder


def _jsonl(path: Path, rows: list[dict | str]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _where(issues: list[Issue]) -> list[tuple[int, str | None, str, str]]:
    return [(i.row, i.field, i.action, i.kind) for i in issues]


# ------------------------------------------------------------------------------------------------
# formats and field parsing


def test_jsonl_fields_are_parsed(tmp_path, images):
    path = _jsonl(tmp_path / "shop.jsonl", [
        {"product_id": "p1", "catalog_id": 12.0, "title": "  Red sneakers  ", "brand": "Acme",
         "category": ["Fashion", "Shoes", " Sneakers "], "attributes": "color:red; size : 270",
         "images": "img/a.jpg|img/b.jpg", "adult": "no", "lang": "en", "split": "train"},
        {"title": "Lamp", "images": ["img/c.png"], "category": "Home>Lighting >  Lamps",
         "attributes": {"watt": 40, "dimmable": True, "extra": None}, "adult": "19+"},
        {"product_id": 7, "title": "Mug", "images": '["img/a.jpg"]', "catalog_id": "",
         "adult": 0, "attributes": '{"colour": "white"}'},
        {"title": "Cup", "images": "img/b.jpg;img/a.jpg", "catalog_id": "C-9", "adult": None},
    ])
    read = read_catalog(path)
    assert read.issues == [] and read.total_rows == 4
    first, second, third, fourth = read.listings
    assert first == Listing(
        product_id="p1", title="Red sneakers", images=[str(images / "a.jpg"), str(images / "b.jpg")],
        catalog_id="12", brand="Acme", category="Fashion > Shoes > Sneakers",
        attributes={"color": "red", "size": "270"}, adult=False, lang="en", split="train")
    assert second.product_id == "shop:2"  # generated from the file stem and row
    assert second.category == "Home > Lighting > Lamps"
    assert second.attributes == {"watt": "40", "dimmable": "true"}
    assert second.adult is True and second.catalog_id is None and second.brand is None
    assert third.product_id == "7" and third.catalog_id is None and third.adult is False
    assert third.images == [str(images / "a.jpg")] and third.attributes == {"colour": "white"}
    assert fourth.images == [str(images / "b.jpg"), str(images / "a.jpg")]
    assert fourth.catalog_id == "C-9" and fourth.adult is None


def test_json_list_file(tmp_path, images):
    path = tmp_path / "shop.json"
    path.write_text(json.dumps([{"title": "A", "images": "img/a.jpg"}, ["not", "an", "object"]]))
    read = read_catalog(path)
    assert [x.title for x in read.listings] == ["A"]
    assert _where(read.issues) == [(2, None, "skipped_row", "not a JSON object")]


def test_csv_with_renamed_columns(tmp_path, images):
    path = tmp_path / "export.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_name", "image_files", "group", "brand", "adult", "category",
                         "attributes", "unused"])
        writer.writerow(["Shoe, red", "img/a.jpg|img/b.jpg", "12.0", "", "1", "A > B",
                         '{"size": "270"}', "x"])
        writer.writerow(["Hat", "img/c.png", "nan", "NULL", "", "", "", ""])
        writer.writerow(["Bag\nwith two lines", "img/a.jpg", "", "Acme", "false", "", "k:v", ""])
    read = read_catalog(path, column_map={"title": "item_name", "images": "image_files",
                                          "catalog_id": "group"})
    assert read.issues == []
    shoe, hat, bag = read.listings
    assert (shoe.title, shoe.catalog_id, shoe.brand, shoe.adult) == ("Shoe, red", "12", None, True)
    assert shoe.images == [str(images / "a.jpg"), str(images / "b.jpg")]
    assert shoe.attributes == {"size": "270"} and shoe.category == "A > B"
    assert (hat.catalog_id, hat.brand, hat.adult, hat.category, hat.attributes) == (
        None, None, None, None, {})
    assert hat.product_id == "export:2"
    assert bag.title == "Bag\nwith two lines" and bag.product_id == "export:3"
    assert bag.adult is False and bag.attributes == {"k": "v"}


def test_tsv_and_csv_row_errors(tmp_path, images):
    path = tmp_path / "shop.tsv"
    path.write_text("title\timages\n\nA\timg/a.jpg\nB\timg/a.jpg\textra\n", encoding="utf-8")
    read = read_catalog(path)
    assert [x.title for x in read.listings] == ["A"]
    assert read.total_rows == 2  # the blank line is not a row
    assert _where(read.issues) == [(2, None, "skipped_row", "wrong number of cells")]


def test_parquet_with_lists_maps_and_nulls(tmp_path, images):
    table = pa.table({
        "product_id": pa.array([1, 2, 3], pa.int64()),
        "name": ["Kettle", "Toaster", ""],
        "pics": pa.array([["img/a.jpg"], ["img/b.jpg", "img/c.png"], ["img/a.jpg"]]),
        "catalog_id": pa.array([5.0, None, float("nan")]),
        "attributes": pa.array([[("volume", "1.7L")], [], None],
                               pa.map_(pa.string(), pa.string())),
        "adult": pa.array([False, None, True]),
    })
    path = tmp_path / "shop.parquet"
    pq.write_table(table, path)
    read = read_catalog(path, column_map={"title": "name", "images": "pics"})
    kettle, toaster = read.listings
    assert (kettle.product_id, kettle.catalog_id, kettle.attributes, kettle.adult) == (
        "1", "5", {"volume": "1.7L"}, False)
    assert toaster.images == [str(images / "b.jpg"), str(images / "c.png")]
    assert (toaster.catalog_id, toaster.attributes, toaster.adult) == (None, {}, None)
    assert _where(read.issues) == [(3, "title", "skipped_row", "missing title")]


def test_image_root_and_absolute_paths(tmp_path, images):
    elsewhere = tmp_path / "catalogs"
    elsewhere.mkdir()
    path = _jsonl(elsewhere / "shop.jsonl", [
        {"title": "A", "images": "a.jpg"},
        {"title": "B", "images": [str(images / "b.jpg")]},
    ])
    read = read_catalog(path, image_root=images)
    assert [x.images for x in read.listings] == [[str(images / "a.jpg")], [str(images / "b.jpg")]]
    assert all(os.path.isabs(p) for x in read.listings for p in x.images)


def test_unknown_extension(tmp_path):
    path = tmp_path / "shop.xlsx"
    path.write_text("x")
    with pytest.raises(CatalogError, match=r"shop\.xlsx.*\.jsonl.*\.parquet"):
        read_catalog(path)


def test_mapped_column_that_does_not_exist(tmp_path, images):
    path = tmp_path / "shop.csv"
    path.write_text("name,pics\nA,img/a.jpg\n")
    with pytest.raises(CatalogError) as info:
        read_catalog(path, column_map={"title": "item_name", "images": "pics"})
    message = str(info.value)
    assert "data.column_map.title=item_name: the file has no column 'item_name'" in message
    assert "The file's columns: name, pics" in message
    assert "(set data.column_map.title=name?)" in message  # 'name' looks like a title
    assert info.value.field == "title"


def test_required_column_missing_without_a_map(tmp_path, images):
    path = _jsonl(tmp_path / "shop.jsonl", [{"name": "A", "images": "img/a.jpg"}])
    with pytest.raises(CatalogError, match=r"no 'title' column \(set data.column_map.title=name\?\)"
                                           r"\. The file's columns: images, name"):
        read_catalog(path)


def test_every_column_problem_at_once_in_the_form_the_user_types(tmp_path, images):
    path = tmp_path / "shop.csv"
    path.write_text("sku,item_name,img,cat_path,brand_name,colour\nA1,Lamp,img/a.jpg,Home > Lamp,ACME,red\n")
    with pytest.raises(CatalogError) as info:
        read_catalog(path, column_map={"catalog_id": "group"})
    message = str(info.value)
    assert "data.column_map.catalog_id=group: the file has no column 'group'" in message
    assert "no 'title' column (set data.column_map.title=item_name?)" in message
    assert "no 'images' column (set data.column_map.images=img?)" in message
    assert "The file's columns: brand_name, cat_path, colour, img, item_name, sku" in message
    assert "'cat_path' (data.column_map.category=cat_path)" in message
    assert "'brand_name' (data.column_map.brand=brand_name)" in message
    assert info.value.field is None  # several fields
    assert "column_map={" not in message and "\n" not in message  # one line, no Python

    # mapped: the unused look-alikes are a warning line in the summary and in the report
    read = read_catalog(path, column_map={"title": "item_name", "images": "img"})
    assert len(read.listings) == 1 and read.listings[0].category is None
    assert read.lookalikes == {"brand_name": "brand", "cat_path": "category", "sku": "product_id"}
    warning = read.summary().splitlines()[1]
    assert warning.startswith("warning: unused column(s) that look like catalog fields")
    assert "'cat_path' (data.column_map.category=cat_path)" in warning
    read.write_report(tmp_path / "bad_rows.json")
    report = json.loads((tmp_path / "bad_rows.json").read_text())
    assert report["unused_columns"]["cat_path"] == "data.column_map.category=cat_path"
    # a field the file gives from another column is not suggested again
    full = read_catalog(path, column_map={"title": "item_name", "images": "img", "category":
                                          "cat_path", "brand": "brand_name", "product_id": "sku"})
    assert full.lookalikes == {} and "warning" not in full.summary()


@pytest.mark.parametrize("column,field", [
    ("cat_path", "category"), ("item_name", "title"), ("img", "images"), ("brand_name", "brand"),
    ("product_category", "category"), ("Main Image", "images"), ("SKU", "product_id"),
    ("colour", None), ("price", None),
])
def test_columns_that_look_like_fields(column, field):
    assert readers.looks_like(column) == field


def test_unknown_standard_field_in_column_map(tmp_path, images):
    path = _jsonl(tmp_path / "shop.jsonl", [{"title": "A", "images": "img/a.jpg"}])
    with pytest.raises(CatalogError, match="data.column_map.price=cost: 'price', which is not a "
                                           "standard field"):
        read_catalog(path, column_map={"price": "cost"})


@pytest.mark.parametrize("name,content", [
    ("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("empty.csv", ""), ("header.csv", "title,images\n"),
    ("empty.json", "[]"), ("empty.parquet", None),
])
def test_empty_files(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"title": pa.array([], pa.string()),
                                 "images": pa.array([], pa.string())}), path)
    else:
        path.write_text(content)
    with pytest.raises(CatalogError, match=r"empty|no rows|no header"):
        read_catalog(path)


def test_missing_catalog_file(tmp_path):
    with pytest.raises(CatalogError, match="file not found"):
        read_catalog(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------------------------
# bad rows


BAD_ROWS = [
    {"product_id": "ok", "title": "Good", "images": "img/a.jpg"},                       # 1
    {"product_id": "p2", "title": "   ", "images": "img/a.jpg"},                         # 2
    {"product_id": "p3", "title": "No file", "images": "img/missing.jpg"},               # 3
    {"product_id": "p4", "title": "Corrupt", "images": "img/bad.jpg"},                   # 4
    {"product_id": "ok", "title": "Same id", "images": "img/b.jpg"},                     # 5
    {"product_id": "p6", "title": "Attrs", "images": "img/a.jpg", "attributes": "color=red"},
    {"product_id": "p7", "title": "Adult", "images": "img/a.jpg", "adult": "maybe"},    # 7
    '{"product_id": "p8", "title": "broken",',                                           # 8
    {"product_id": "p9", "title": "List attrs", "images": "img/a.jpg", "attributes": "[1, 2]"},
    {"product_id": "p10", "title": "Half", "images": "img/cut.jpg|img/b.jpg"},           # 10
    {"product_id": "p11", "title": "No images", "images": []},                           # 11
    {"product_id": "p12", "title": "Web", "images": "https://cdn.example.com/x.jpg"},    # 12
]


def test_every_bad_row_is_reported_with_file_row_and_field(tmp_path, images):
    path = _jsonl(tmp_path / "shop.jsonl", BAD_ROWS)
    read = read_catalog(path)
    assert [x.product_id for x in read.listings] == ["ok", "p10"]
    assert read.listings[1].images == [str(images / "b.jpg")]
    assert all(issue.file == str(path) for issue in read.issues)
    assert _where(read.issues) == [
        (2, "title", "skipped_row", "missing title"),
        (3, "images", "dropped_image", "file not found"),
        (3, "images", "skipped_row", "no usable image"),
        (4, "images", "dropped_image", "not an image file"),
        (4, "images", "skipped_row", "no usable image"),
        (5, "product_id", "skipped_row", "duplicate product_id"),
        (6, "attributes", "skipped_row", "bad attributes"),
        (7, "adult", "skipped_row", "bad adult value"),
        (8, None, "skipped_row", "malformed JSON"),
        (9, "attributes", "skipped_row", "bad attributes"),
        (10, "images", "dropped_image", "truncated image"),
        (11, "images", "skipped_row", "no image"),
        (12, "images", "dropped_image", "image URL"),
        (12, "images", "skipped_row", "no usable image"),
    ]
    assert str(images / "missing.jpg") in read.issues[1].reason
    assert "first used at row 1" in read.issues[5].reason
    assert (read.total_rows, read.skipped_rows, read.dropped_images) == (12, 10, 4)


def test_jsonl_row_numbers_are_line_numbers(tmp_path, images):
    path = tmp_path / "shop.jsonl"
    path.write_text('{"title": "A", "images": "img/a.jpg"}\n\n{"title": "", "images": "img/a.jpg"}\n')
    read = read_catalog(path)
    assert _where(read.issues) == [(3, "title", "skipped_row", "missing title")]
    assert read.total_rows == 2


def test_strict_mode_raises_at_the_first_problem(tmp_path, images):
    path = _jsonl(tmp_path / "shop.jsonl", BAD_ROWS)
    with pytest.raises(CatalogError) as info:
        read_catalog(path, strict=True)
    assert (info.value.file, info.value.row, info.value.field) == (str(path), 2, "title")
    assert "row 2" in str(info.value) and "missing title" in str(info.value)

    # A dropped image is a problem too, even if the listing would be kept.
    half = _jsonl(tmp_path / "half.jsonl", [{"title": "A", "images": "img/a.jpg"},
                                            {"title": "B", "images": "img/b.jpg|img/nope.jpg"}])
    with pytest.raises(CatalogError, match=r"row 2.*file not found"):
        read_catalog(half, strict=True)


def test_without_image_checks_paths_are_kept(tmp_path, images):
    path = _jsonl(tmp_path / "shop.jsonl", [{"title": "A", "images": "img/missing.jpg"}])
    read = read_catalog(path, check_images=False)
    assert read.issues == [] and read.listings[0].images == [str(images / "missing.jpg")]


def test_each_image_is_checked_once(tmp_path, images, monkeypatch):
    calls: list[str] = []
    original = readers.check_image

    def counting(path, **kwargs):
        calls.append(path)
        return original(path, **kwargs)

    monkeypatch.setattr(readers, "check_image", counting)
    path = _jsonl(tmp_path / "shop.jsonl",
                  [{"title": f"T{i}", "images": "img/a.jpg|img/b.jpg"} for i in range(20)])
    read = read_catalog(path)
    assert len(read.listings) == 20
    assert sorted(calls) == [str(images / "a.jpg"), str(images / "b.jpg")]


def test_summary_and_report(tmp_path, images):
    path = _jsonl(tmp_path / "shop.jsonl", BAD_ROWS)
    read = read_catalog(path)
    summary = read.summary()
    assert "12 rows" in summary and "kept 2 listings" in summary
    assert "skipped 10 rows" in summary and "3 no usable image" in summary
    assert "2 bad attributes" in summary and "dropped 4 images" in summary

    report_path = tmp_path / "out" / "bad_rows.json"
    read.write_report(report_path)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["total_rows"] == 12 and report["skipped_rows"] == 10
    assert report["counts"]["skipped_row"]["no usable image"] == 3
    assert report["counts"]["dropped_image"] == {
        "file not found": 1, "not an image file": 1, "truncated image": 1, "image URL": 1}
    assert len(report["issues"]) == len(read.issues)
    assert report["issues"][0] == {"file": str(path), "row": 2, "field": "title",
                                   "reason": "missing title", "action": "skipped_row",
                                   "line": 2, "product_id": "p2"}


def test_issues_give_the_file_line_and_the_product_id(tmp_path, images):
    """A CSV's header is line 1 and a quoted cell may span lines: ``line`` is where an editor shows
    the row, ``row`` the data row; the row's id comes along (issue 14, item 5)."""
    path = tmp_path / "shop.csv"
    path.write_text('id,title,images\n'
                    'a1,"Lamp, two\nlines",img/a.jpg\n'   # row 1: lines 2-3
                    '\n'                                    # line 4: blank, not a row
                    'a2,,img/a.jpg\n'                       # row 2, line 5: no title
                    'a3,Cup,img/missing.jpg|img/b.jpg\n'    # row 3, line 6: one image dropped
                    'a1,Copy,img/a.jpg\n'                   # row 4, line 7: duplicate id
                    'x,y\n')                                # row 5, line 8: wrong number of cells
    read = read_catalog(path, column_map={"product_id": "id"})
    assert [(i.row, i.line, i.product_id, i.field) for i in read.issues] == [
        (2, 5, "a2", "title"), (3, 6, "a3", "images"), (4, 7, "a1", "product_id"),
        (5, 8, None, None)]
    assert [i.where for i in read.issues] == ["line 5", "line 6", "line 7", "line 8"]
    assert "first used at row 1 (line 2)" in read.issues[2].reason
    read.write_report(tmp_path / "bad_rows.json")
    issues = json.loads((tmp_path / "bad_rows.json").read_text())["issues"]
    assert (issues[0]["row"], issues[0]["line"], issues[0]["product_id"]) == (2, 5, "a2")
    with pytest.raises(CatalogError) as info:
        read_catalog(path, column_map={"product_id": "id"}, strict=True)
    assert (info.value.row, info.value.line) == (2, 5) and "row 2 (line 5)" in str(info.value)

    # Parquet and JSON have no lines: ``row`` is the place (for Parquet the row index, 1-based)
    table = pa.table({"id": ["b1", "b2"], "title": ["Lamp", None], "images": ["img/a.jpg"] * 2})
    pq.write_table(table, tmp_path / "shop.parquet")
    (issue,) = read_catalog(tmp_path / "shop.parquet", column_map={"product_id": "id"}).issues
    assert (issue.row, issue.line, issue.product_id, issue.where) == (2, None, "b2", "row 2")


def test_progress_bar(tmp_path, images, capsys):
    path = _jsonl(tmp_path / "shop.jsonl", [{"title": "A", "images": "img/a.jpg"}])
    read_catalog(path, progress=True)
    assert "reading shop.jsonl" in capsys.readouterr().err
    read_catalog(path)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------------
# writing


def test_write_read_round_trip_preserves_every_field(tmp_path, images):
    listings = [
        Listing(product_id="k1", title="나이키 에어맥스 270 운동화 (정품)",
                images=[str(images / "a.jpg"), str(images / "b.jpg")], catalog_id="C1", brand="나이키",
                category="패션 > 신발 > 운동화", attributes={"색상": "검정", "size": "270"},
                adult=False, lang="ko", split="train"),
        Listing(product_id="k2", title="Plain lamp", images=[str(images / "c.png")]),
        Listing(product_id="k3", title="성인용품 19+", images=[str(images / "a.jpg")], adult=True,
                split="test"),
    ]
    out = tmp_path / "data" / "clean.jsonl"
    write_listings(listings, out, image_root=tmp_path)
    text = out.read_text(encoding="utf-8")
    assert "나이키 에어맥스" in text  # real UTF-8, not \\u escapes
    first = json.loads(text.splitlines()[0])
    assert first["images"] == ["img/a.jpg", "img/b.jpg"]
    read = read_catalog(out, image_root=tmp_path)
    assert read.issues == [] and read.listings == listings

    absolute = tmp_path / "abs.jsonl"
    write_listings(listings, absolute)
    assert read_catalog(absolute).listings == listings


def test_korean_csv(tmp_path, images):
    path = tmp_path / "kr.csv"
    path.write_text("\ufeff상품명,이미지,카테고리\n"
                    "여름 원피스,img/a.jpg,여성의류 > 원피스\n", encoding="utf-8")
    read = read_catalog(path, column_map={"title": "상품명", "images": "이미지",
                                          "category": "카테고리"})
    assert read.listings[0].title == "여름 원피스"
    assert read.listings[0].leaf_category == "원피스"


def test_catalog_read_counts_only_their_action():
    issues = [Issue("f", 1, "images", "file not found: x", "dropped_image"),
              Issue("f", 1, "images", "no usable image", "skipped_row"),
              Issue("f", 2, "title", "missing title", "skipped_row")]
    read = CatalogRead("f", [], issues, 2)
    assert (read.skipped_rows, read.dropped_images) == (2, 1)
    assert read.counts() == {"skipped_row": {"no usable image": 1, "missing title": 1},
                             "dropped_image": {"file not found": 1}}


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
    assert_one_line(err.value, str(path), "nested too deeply")


def test_deeply_nested_json_in_csv_cells_is_a_reported_bad_row(tmp_path):
    png(tmp_path / "good.png")
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
    png(tmp_path / "good.png")
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


def test_catalogread_keeps_its_old_positional_form():
    read = CatalogRead("c.jsonl", [], [], 0)
    assert read.image_root is None


@pytest.mark.e2e
def test_column_problems_come_at_once_in_the_cli_form(shop, tmp_path, capsys):
    path, images = shop
    code = main(["train", "--catalog", str(path), "--image-root", str(images), "--output-dir",
                 str(tmp_path / "run"), "data.column_map.catalog_id=grp"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "data.column_map.catalog_id=grp: the file has no column 'grp'" in err
    assert "no 'title' column (set data.column_map.title=item_name?)" in err
    assert "no 'images' column (set data.column_map.images=img?)" in err
    assert "The file's columns: cat_path, group, img, item_name, item_no, maker, split" in err
    assert "column_map={" not in err


@pytest.mark.e2e
def test_unused_lookalike_columns_are_a_warning_in_the_summary(baseline_run):
    _, out, _, _, _ = baseline_run
    warning = next(x for x in out.splitlines() if x.startswith("warning: unused column"))
    assert "'cat_path' (data.column_map.category=cat_path)" in warning
    assert "'maker' (data.column_map.brand=maker)" in warning


@pytest.mark.e2e
def test_bad_row_report_gives_file_lines_and_product_ids(baseline_run):
    _, out, _, run, _ = baseline_run
    issues = json.loads((run / "bad_rows.json").read_text())["issues"]
    where = {(i["row"], i["line"], i["product_id"], i["field"], i["action"]) for i in issues}
    assert (5, 6, "N004", "title", "skipped_row") in where  # row 5 is line 6: the header is line 1
    assert (9, 10, "N008", "images", "dropped_image") in where
