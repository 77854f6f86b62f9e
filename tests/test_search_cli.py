"""``eclip index`` (build, --update, --delete) and ``eclip serve`` from the command line."""

from __future__ import annotations

from dataclasses import replace

import pytest

from eclip.catalog.readers import write_listings
from eclip.cli import main
from eclip.search import SearchIndex

from recipes import SHOP_COLUMNS


@pytest.mark.e2e
def test_index_build_update_delete(tiny_catalog, tiny_model_dir, listings, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["index", "--model", str(tiny_model_dir), "--catalog", str(tiny_catalog),
                 "--out", str(out), "--kind", "ivf", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(listings)} listings" in printed and "recall@10 vs exact" in printed
    assert f"eclip serve --index {out}" in printed

    root = tiny_catalog.parent
    extra = [replace(listings[0], product_id="new-1", title="a new listing"),
             replace(listings[1], title="renamed")]
    write_listings(extra, tmp_path / "changes.jsonl", image_root=root)
    assert main(["index", "--update", "--catalog", str(tmp_path / "changes.jsonl"),
                 "--image-root", str(root), "--out", str(out), "--quiet"]) == 0
    assert "(added 1, updated 1, deleted 0)" in capsys.readouterr().out
    index = SearchIndex.open(out)
    assert index.listing(listings[1].product_id).title == "renamed"
    assert index.info.vectors["text"].kind == "ivf"  # the build's settings carry over

    (tmp_path / "gone.txt").write_text(f"# sold out\n{listings[2].product_id}\n\n")
    assert main(["index", "--delete", f"new-1,{listings[3].product_id}", "--out", str(out)]) == 0
    assert main(["index", "--delete", f"@{tmp_path / 'gone.txt'}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "deleted 2)" in printed and "deleted 1)" in printed
    index = SearchIndex.open(out)
    assert len(index) == len(listings) - 2 and index.listing("new-1") is None


@pytest.mark.parametrize("args, message", [
    (["index", "--catalog", "c.jsonl", "--out", "x"], "--model DIR is required"),
    (["index", "--model", "m", "--out", "x"], "--catalog FILE is required"),
    (["index", "--delete", "a", "--catalog", "c.jsonl", "--out", "x"], "without --catalog"),
    (["index", "--delete", " , ", "--out", "x"], "names no product id"),
    (["index", "--delete", "a", "--out", "{tmp}"], "is not an index"),
    (["serve", "--index", "{tmp}"], "is not an eclip search index"),
    (["index", "--model", "m", "--catalog", "c.jsonl", "--max-memory", "lots", "--out", "x"],
     "'lots' is not a size"),
])
def test_index_and_serve_errors_are_one_line(args, message, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.e2e
def test_serve_runs_the_app_on_the_given_address(tiny_catalog, tiny_model_dir, tmp_path,
                                                 monkeypatch, capsys):
    import faiss
    import torch
    import uvicorn

    out = tmp_path / "idx"
    assert main(["index", "--model", str(tiny_model_dir), "--catalog", str(tiny_catalog),
                 "--out", str(out), "--quiet"]) == 0
    calls, threads = [], []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # not for the rest of the session
    monkeypatch.setattr(faiss, "omp_set_num_threads", threads.append)
    assert main(["serve", "--index", str(out), "--port", "8123", "--max-upload-mb", "2"]) == 0
    app, kw = calls[0]
    assert (kw["host"], kw["port"]) == ("127.0.0.1", 8123)
    assert "/search/text" in {route.path for route in app.routes}
    assert threads == [1, 1]  # one thread per query: requests run in parallel
    assert "http://127.0.0.1:8123" in capsys.readouterr().out


@pytest.mark.e2e
def test_index_warns_about_held_out_listings_and_can_index_one_split(shop, baseline_run,
                                                                     tmp_path, capsys):
    path, images = shop
    _, _, _, run, _ = baseline_run
    common = ["--model", str(run / "model"), "--catalog", str(path), "--image-root",
              str(images), "--threads", "1", SHOP_COLUMNS]
    assert main(["index", *common, "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    warning = next(x for x in out.splitlines() if "are indexed" in x)
    assert warning.startswith("warning: 12 listings of split 'test' are indexed")
    assert "measures memory, not generalisation" in warning and "--split train" in warning
    assert main(["index", *common, "--split", "train", "--out", str(tmp_path / "train")]) == 0
    out = capsys.readouterr().out
    assert "are indexed" not in out and "indexing the 46 listings of split train (of 58)" in out
    from eclip.search import SearchIndex

    index = SearchIndex.open(tmp_path / "train")
    test_id = "N000"  # product 0 is a test product
    assert index.listing(test_id) is None and index.listing("N003") is not None
    assert main(["index", *common, "--split", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no listing has split nope" in capsys.readouterr().err
