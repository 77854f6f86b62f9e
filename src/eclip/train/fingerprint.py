"""The fingerprint of what a run trains on, saved in its checkpoints and compared on ``--resume``.

A resumed run takes its model (with the tokenizer a scratch text tower trained on the catalog) from
OUTPUT_DIR/init and the checkpoint, and its data positions from the checkpoint: all of it derived
from the data the run started with. If the catalog changed in between (titles edited, rows
replaced, the same row count or not), the saved token ids, sampler positions and catalog targets
would silently mean other things; so the run refuses, naming what changed.

The fingerprint is a few SHA-1 digests over the training listings in their order: product ids,
texts as composed for training (title, brand, category, attributes, as ``data.text`` renders them,
before field dropout), image paths, catalog ids; for a run streaming shards, over the records of the
training split (the same fields, as ``eclip prepare`` wrote them). The validation listings have a
digest of their own (ids, texts, images): the validation loss and the best checkpoint chosen by it
would otherwise compare numbers computed on different rows. A checkpoint written before that digest
existed resumes without the check.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.schema import Listing
from eclip.errors import ConfigError
from eclip.train.recipe import Recipe

VERSION = 1
# component -> how the message names it
PARTS = {
    "listings": "the number of training listings",
    "product_ids": "their product ids",
    "texts": "their texts (title, brand, category, attributes as data.text composes them)",
    "images": "their image paths",
    "catalogs": "their catalog ids",
    "records": "the shards' records (ids, texts, images)",
    "validation": "the validation listings (ids, texts, images)",
}


def _digest(values: Iterable[Any]) -> str:
    sha = hashlib.sha1()
    for value in values:
        sha.update(json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        sha.update(b"\n")
    return sha.hexdigest()


def listings_fingerprint(listings: list[Listing], composer: TextComposer) -> dict[str, Any]:
    """The fingerprint of training listings held in memory."""
    return {
        "version": VERSION, "kind": "listings", "listings": len(listings),
        "product_ids": _digest(x.product_id for x in listings),
        "texts": _digest(composer.compose(x) for x in listings),
        "images": _digest(list(x.images) for x in listings),
        "catalogs": _digest(x.catalog_id for x in listings),
    }


def shards_fingerprint(shard_dir: str | Path, split: str | None) -> dict[str, Any]:
    """The fingerprint of the training split of prepared shards (their records, no image data)."""
    from eclip.catalog.shards import ShardIndex

    index = ShardIndex.load(shard_dir)
    count = 0

    def records():
        nonlocal count
        for record in index.records(split):
            count += 1
            yield {k: v for k, v in record.items() if k != "index"}

    digest = _digest(records())
    return {"version": VERSION, "kind": "shards", "listings": count, "records": digest}


def validation_digest(listings: Iterable[Listing], composer: TextComposer) -> str:
    """One digest over the validation listings: their ids, composed texts and image paths."""
    return _digest([x.product_id, composer.compose(x), list(x.images)] for x in listings)


def data_fingerprint(recipe: Recipe, listings: list[Listing],
                     val_listings: Iterable[Listing] = ()) -> dict[str, Any]:
    """What the run of ``recipe`` trains on (``listings``, or the shards of ``data.shards``) and
    validates on (``val_listings``)."""
    composer = TextComposer(ComposerConfig.from_dict(recipe.data.text))
    if recipe.data.shards:
        found = shards_fingerprint(recipe.data.shards, recipe.data.train_split)
    else:
        found = listings_fingerprint(listings, composer)
    found["validation"] = validation_digest(val_listings, composer)
    return found


def check_fingerprint(saved: dict[str, Any] | None, current: dict[str, Any], checkpoint: Path,
                      out_dir: Path) -> str | None:
    """ConfigError where ``current`` differs from the fingerprint ``saved`` in the checkpoint,
    naming what changed; a note (returned) where the checkpoint has none (written before
    fingerprints were), else None."""
    if not isinstance(saved, dict) or saved.get("version") != VERSION:
        return (f"{checkpoint} holds no fingerprint of its training data: resuming without "
                "checking that the data is the one the run started with")
    if saved.get("kind") != current.get("kind"):
        changed = [f"the data source (it trained on {saved.get('kind')}, this run reads "
                   f"{current.get('kind')})"]
    else:
        # a part the checkpoint lacks (written before that part was) is not compared
        changed = [PARTS[key] for key in PARTS
                   if key in saved and saved.get(key) != current.get(key)]
        if changed and saved.get("listings") != current.get("listings"):
            changed[0] = (f"the number of training listings ({saved.get('listings')} when the "
                          f"run started, {current.get('listings')} now)")
    if not changed:
        return None
    raise ConfigError(
        f"--resume: the training data is not the data {checkpoint} was trained on: "
        f"{'; '.join(changed)} changed. The saved model (its tokenizer, token ids and data "
        f"positions) belongs to the old data: resume with the catalog as it was, or start a new "
        f"run with the new data (a new --output-dir, or {out_dir} again without --resume)")
