"""Files that appear whole or not at all (``eclip.atomic``): temporaries named after their writer,
and what a writer killed by SIGKILL left swept at the next start of train, embed, prepare and index."""

from __future__ import annotations

import os
import shutil

from eclip.atomic import atomic_open, clean_stale_temps
from eclip.catalog.readers import read_catalog

from files import age, dead_pid


def test_clean_stale_temps_removes_only_what_a_dead_writer_left(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model").mkdir()
    stale = [folder / f".last.pt.tmp-{dead}-0123abcd", folder / f".recipe.json.tmp-{dead}-89abcdef",
             folder / ".last.pt.tmp-fedcba98"]  # the old name without a pid, from before
    for path in stale:
        path.write_bytes(b"half")
    (folder / f".model.tmp-{dead}-00112233").mkdir()
    (folder / f".model.tmp-{dead}-00112233" / "model.safetensors").write_bytes(b"half")
    stale.append(folder / f".model.tmp-{dead}-00112233")
    kept = [folder / f".last.pt.tmp-{alive}-44556677",  # a writer at work in this process
            folder / ".last.pt.tmp-99887766",  # no pid, newer than this process: maybe at work
            folder / "last.pt", folder / ".hidden", folder / ".x.tmp-notahex"]
    for path in kept:
        path.write_bytes(b"keep")
    for path in stale + [kept[0]]:
        age(path)
    removed = clean_stale_temps(folder)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert (folder / "model").is_dir()


def test_an_old_copy_whose_replacement_never_arrived_is_put_back(tmp_path):
    dead = dead_pid()
    (tmp_path / f".model.old-{dead}-aabbccdd").mkdir()  # killed between the two renames
    (tmp_path / f".model.old-{dead}-aabbccdd" / "config.json").write_text("{}")
    age(tmp_path / f".model.old-{dead}-aabbccdd")
    clean_stale_temps(tmp_path)
    assert (tmp_path / "model" / "config.json").is_file()


def test_atomic_writes_name_their_writer(tmp_path):
    with atomic_open(tmp_path / "x.json", "w") as handle:
        [tmp] = [p for p in tmp_path.iterdir()]
        assert tmp.name.startswith(f".x.json.tmp-{os.getpid()}-")
        handle.write("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_writer_killed_by_sigkill_leaves_a_temporary_the_next_start_sweeps(tmp_path,
                                                                            killed_writer):
    import eclip.atomic

    target = tmp_path / "x.json"
    left = killed_writer(target)  # a real SIGKILL halfway through the write
    assert not target.exists()  # the kill never reaches the target: no half-written x.json
    before = eclip.atomic.PROCESS_START
    eclip.atomic.PROCESS_START = left.stat().st_mtime - 1  # a run that started before the kill
    try:
        assert clean_stale_temps(tmp_path) == [] and left.exists()  # might still be writing
    finally:
        eclip.atomic.PROCESS_START = before
    assert clean_stale_temps(tmp_path) == [left] and not left.exists()


def test_embed_sweeps_what_a_killed_embed_left(tmp_path, killed_writer):
    import numpy as np

    from eclip.encode import Embeddings, write_embeddings

    out = tmp_path / "emb.parquet"
    left = killed_writer(out)
    other = killed_writer(tmp_path / "keep.parquet")  # another file's: not this command's to sweep
    vectors = np.eye(2, dtype=np.float32)
    write_embeddings(Embeddings(["a", "b"], vectors, vectors, np.hstack([vectors, vectors]), 0.5),
                     out)
    assert out.is_file() and not left.exists() and other.exists()


def test_prepare_and_index_clean_what_a_killed_run_left(tiny_catalog, tiny_model_dir, tmp_path,
                                                        tiny_index):
    from eclip.catalog.shards import prepare_shards
    from eclip.search import update_index

    dead = dead_pid()
    shards = tmp_path / "shards"
    shards.mkdir()
    left = [shards / f".shard-000000.tar.tmp-{dead}-12345678",
            shards / f".index.json.tmp-{dead}-12345678"]
    for path in left:
        path.write_bytes(b"half")
        age(path)
    prepare_shards(read_catalog(tiny_catalog).listings[:5], shards, image_size=16, progress=False)
    assert not any(p.exists() for p in left)

    index = tmp_path / "index"
    shutil.copytree(tiny_index, index)
    photos = next(p for p in (index / "images").iterdir() if p.is_dir())
    left = [index / f".tmp-{dead}-0123456789ab", index / ".tmp-0123456789ab",
            index / f".CURRENT.tmp-{dead}-12345678", photos / f".{'0' * 40}.jpg.tmp-{dead}-1234abcd"]
    left[0].mkdir()
    left[1].mkdir()
    for path in left[2:]:
        path.write_bytes(b"half")
    update_index(index, [], progress=False)  # the writer holds the lock: every temporary is stale
    assert not any(p.exists() for p in left)
