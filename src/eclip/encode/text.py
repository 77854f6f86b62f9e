"""The text a model composes for a listing: the composer saved with the model, or its title alone."""

from __future__ import annotations

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.schema import Listing


def model_composer(model) -> TextComposer:
    """The text composer the model was trained with (no dropout: evaluation passes no rng)."""
    return TextComposer(ComposerConfig.from_dict(model.config.text_composer or {}))


def title_composer(model) -> TextComposer:
    """The model's own composer (cleaning, case) reduced to the title: what the evaluation's text
    modality reads, since a listing's category and attributes are the labels of its tasks."""
    config = model_composer(model).config.to_dict()
    config.update(segments=["{title}"], field_dropout={})
    return TextComposer(ComposerConfig.from_dict(config))


def query_listing(title: str) -> Listing:
    """A search query as a listing with only a title, for the model's composer to render."""
    return Listing(product_id="query", title=title, images=[])
