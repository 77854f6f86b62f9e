"""Zero-shot category classification: image embeddings against embeddings of category-name prompts."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from eclip.catalog.schema import category_parts
from eclip.encode import embed_texts

# Prompts are written the way the training text states a category (see ComposerConfig), so that the
# text tower sees familiar input; several templates are averaged (a prompt ensemble).
DEFAULT_TEMPLATES = ("{path}", "{leaf}")


def category_prompts(category: str, templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[str]:
    parts = category_parts(category)
    return [t.format(path=" > ".join(parts), leaf=parts[-1], top=parts[0]) for t in templates]


def class_vectors(encode: Callable[[list[str]], np.ndarray],
                  prompts: Sequence[Sequence[str]]) -> np.ndarray:
    """One unit vector per class: the normalised mean of the vectors of its prompts (an ensemble).

    ``encode`` maps texts to unit vectors of the joint space; every class has the same number of
    prompts.
    """
    flat = [p for class_prompts in prompts for p in class_prompts]
    emb = encode(flat).reshape(len(prompts), len(prompts[0]), -1).mean(axis=1)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def class_embeddings(model, classes: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
    return class_vectors(lambda texts: embed_texts(model, texts),
                         [category_prompts(c, templates) for c in classes])


def zero_shot_accuracy(model, embeddings: np.ndarray, labels: Sequence[str],
                       templates: Sequence[str] = DEFAULT_TEMPLATES) -> dict[str, float]:
    """Top-1 accuracy of ``argmax(embeddings @ class_embeddings.T)`` over the classes in ``labels``."""
    classes = sorted(set(labels))
    class_emb = class_embeddings(model, classes, templates)
    predicted = (embeddings @ class_emb.T).argmax(axis=1)
    truth = np.array([classes.index(label) for label in labels])
    return {"accuracy": float((predicted == truth).mean()), "chance": 1.0 / len(classes),
            "classes": float(len(classes))}
