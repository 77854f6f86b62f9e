"""The training recipe of the tests: one function, each module's own overrides on top.

    _recipe = partial(tiny_recipe, base=OVERRIDES)     # a module's recipe
    _recipe(out, "train.max_steps=3", lock_image="true")
"""

from __future__ import annotations

from eclip.train.recipe import Recipe, load_recipe


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
