"""The training recipe of the tests: one function, each module's own overrides on top.

    _recipe = partial(tiny_recipe, base=OVERRIDES)     # a module's recipe
    _recipe(out, "train.max_steps=3", lock_image="true")
"""

from __future__ import annotations

import json

from eclip.train.recipe import Recipe, load_recipe

# the column map of the ``shop`` fixture's CSV (conftest.py): a newcomer's own column names
SHOP_COLUMNS = ("data.column_map={title: item_name, images: img, product_id: item_no, "
                "catalog_id: group}")


def tiny_recipe(out, *extra: str, base: tuple[str, ...] | list[str] = (), catalog=None,
                model: dict | None = None, **train) -> Recipe:
    """The default recipe writing to ``out`` without progress bars, with ``data.catalog``
    (``catalog``) and the ``model`` section's keys where given, then ``base`` and ``extra``
    overrides (later ones win), then ``train.KEY=VALUE`` for each keyword."""
    overrides = [f"train.output_dir={out}", "train.progress=false"]
    if catalog is not None:
        overrides.append(f"data.catalog={catalog}")
    overrides += [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}"
                  for k, v in (model or {}).items()]
    overrides += [*base, *extra, *(f"train.{k}={v}" for k, v in train.items())]
    return load_recipe(None, overrides)


def model_overrides(config: dict) -> list[str]:
    """A model section as ``model.KEY=VALUE`` overrides (values as JSON: YAML reads them back)."""
    return [f"model.{k}={json.dumps(v)}" for k, v in config.items()]
