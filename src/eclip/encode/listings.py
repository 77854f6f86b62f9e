"""A listing becomes vectors: image, text and fused ("both"), unit rows, as numpy arrays.

One function (:func:`embed_listings`) serves training's validation, ``eclip embed``, the
evaluation's views and the search index, so that the vectors a report describes are the vectors
that search serves:

- image: the normalised mean of the listing's image vectors (each photo through the evaluation
  transform, the image tower, the projection, unit length);
- text: the listing's text as the composer renders it (the model's own by default), through the text
  tower and the projection, unit length;
- both: :func:`eclip.encode.fusion.fuse` of the two.

With ``features=True`` the towers' pooled features (before projection; per listing the mean over
its photos) come along: what linear probes read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from eclip.catalog.compose import TextComposer
from eclip.catalog.schema import Listing
from eclip.encode.identity import MANIFEST_KEY, PARQUET_KEY
from eclip.encode.fusion import FUSION_WEIGHT, fuse, model_fusion_weight, unit_rows
from eclip.encode.images import ImageFeatureCache, eval_transform
from eclip.encode.loader import photo_batches
from eclip.encode.text import model_composer
from eclip.errors import ConfigError


@dataclass
class Embeddings:
    product_ids: list[str]
    image: np.ndarray  # [N, D] float32, unit rows
    text: np.ndarray  # [N, D]
    product: np.ndarray  # [N, 2D]: fuse(image, text, fusion_weight)
    fusion_weight: float = FUSION_WEIGHT
    image_features: np.ndarray | None = None  # [N, F_image] pooled tower features (features=True)
    text_features: np.ndarray | None = None  # [N, F_text]
    model_sha256: str | None = None  # the model's identity (encode.identity), where recorded

    def modality(self, name: str) -> np.ndarray:
        return {"image": self.image, "text": self.text, "both": self.product}[name]


@torch.no_grad()
def text_features(model, texts: list[str], *, batch_size: int = 128, progress: bool = False,
                  desc: str = "texts") -> torch.Tensor:
    """Pooled text-tower features ``[N, F]`` in the order of ``texts``; batches hold texts of
    similar length, so that little compute goes to padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: torch.Tensor | None = None
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress,
                      unit="batch"):
        rows = order[start:start + batch_size]
        tokens = model.tokenize([texts[i] for i in rows])
        features = model.text_features(tokens["input_ids"].to(model.device),
                                       tokens["attention_mask"].to(model.device)).cpu()
        if out is None:
            out = torch.zeros(len(texts), features.shape[1], dtype=features.dtype)
        out[rows] = features
    return out if out is not None else torch.zeros(0, model.text_tower.out_dim)


@torch.no_grad()
def embed_texts(model, texts: list[str], *, batch_size: int = 128) -> np.ndarray:
    """Unit text vectors in the joint space (queries, prompts, composed listing texts)."""
    model.eval()
    features = text_features(model, list(texts), batch_size=batch_size)
    return unit_rows(projected(model, features, image=False, normalize=False).numpy())


def projected(model, features: torch.Tensor, *, image: bool, normalize: bool) -> torch.Tensor:
    """Tower ``features`` (kept on the CPU) in the joint space, projected on the model's device."""
    projection = model.project_image if image else model.project_text
    return projection(features.to(model.device), normalize=normalize).cpu()


def per_listing_mean(per_image: torch.Tensor, listings: list[Listing]) -> torch.Tensor:
    """Rows of ``per_image`` (the listings' photos in order) averaged per listing."""
    counts = torch.tensor([len(x.images) for x in listings], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(listings)), counts)
    sums = torch.zeros(len(listings), per_image.shape[1], dtype=per_image.dtype)
    sums.index_add_(0, owner, per_image)
    return sums / counts[:, None].clamp(min=1)


@torch.no_grad()
def image_features(model, paths: list[str], *, image_cache: ImageFeatureCache | None = None,
                   batch_size: int = 128, progress: bool = False,
                   desc: str = "images") -> torch.Tensor:
    """Pooled image-tower features ``[len(paths), F]``: from ``image_cache`` (this model's tower)
    when given, else each photo decoded and run through the tower."""
    if image_cache is not None:
        image_cache.check(model)
        return image_cache.tower_features(model, paths)

    def run(pixels: torch.Tensor) -> torch.Tensor:
        return model.image_features(pixels.to(model.device, non_blocking=True)).cpu()

    chunks = photo_batches(paths, eval_transform(model), run, batch_size=batch_size,
                           progress=progress, desc=desc)
    return torch.cat(chunks) if chunks else torch.zeros(0, model.image_tower.out_dim)


@torch.no_grad()
def embed_listings(model, listings: list[Listing], composer: TextComposer | None = None, *,
                   batch_size: int = 128, image_cache: ImageFeatureCache | None = None,
                   fusion_weight: float | None = None, features: bool = False,
                   progress: bool = True, desc: str = "embedding") -> Embeddings:
    """Image, text and fused vectors of ``listings`` (see the module docstring).

    ``composer`` renders each listing's text (default: the model's own); ``image_cache`` (an
    ``ImageFeatureCache`` of this model's image tower) skips decoding and the tower;
    ``fusion_weight`` defaults to the model's own (``encode.fusion.model_fusion_weight``).
    """
    fusion_weight = model_fusion_weight(model) if fusion_weight is None else fusion_weight
    was_training = model.training
    model.eval()
    composer = composer or model_composer(model)
    paths = [p for listing in listings for p in listing.images]
    per_image = image_features(model, paths, image_cache=image_cache, batch_size=batch_size,
                               progress=progress, desc=f"{desc} (images)")
    image = unit_rows(per_listing_mean(projected(model, per_image, image=True, normalize=True),
                                       listings).numpy())
    texts = [composer.compose(listing) for listing in listings]
    text_feats = text_features(model, texts, batch_size=batch_size, progress=progress,
                               desc=f"{desc} (texts)")
    text = unit_rows(projected(model, text_feats, image=False, normalize=False).numpy())
    if not listings:
        image = np.zeros((0, model.config.embed_dim), np.float32)
        text = np.zeros((0, model.config.embed_dim), np.float32)
    out = Embeddings([listing.product_id for listing in listings], image, text,
                     fuse(image, text, fusion_weight), fusion_weight)
    if features:
        out.image_features = per_listing_mean(per_image, listings).numpy()
        out.text_features = text_feats.numpy()
    model.train(was_training)
    return out


EMBED_DTYPES = ("float32", "float16")


def check_embed_dtype(dtype: str) -> None:
    """ConfigError unless ``dtype`` is a type embeddings are stored as."""
    if dtype not in EMBED_DTYPES:
        raise ConfigError(f"embeddings are stored as {' or '.join(EMBED_DTYPES)}, not {dtype!r}")


def write_embeddings(emb: Embeddings, path: str | Path, listings: list[Listing] | None = None,
                     *, model_sha256: str | None = None, dtype: str = "float32",
                     fused: bool = True) -> Path:
    """Parquet with product_id, catalog_id (when listings are given) and the three vectors
    (``product_embedding``: the fused vector, twice the joint dimension); ``model_sha256`` (the
    model's identity, ``encode.identity.model_sha256``) goes into the file's metadata.
    ``dtype="float16"`` stores half-precision vectors; ``fused=False`` leaves the fused vector out
    (a reader computes it from the two others and the recorded fusion weight)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eclip.atomic import atomic_path, clean_stale_temps

    path = Path(path)
    clean_stale_temps(path.parent, (path.name,))  # what an embed killed while writing left behind
    columns = {"product_id": pa.array(emb.product_ids, pa.string())}
    if listings is not None:
        columns["catalog_id"] = pa.array([x.catalog_id for x in listings], pa.string())
    check_embed_dtype(dtype)
    for name, values in (("image_embedding", emb.image), ("text_embedding", emb.text),
                         ("product_embedding", emb.product))[:3 if fused else 2]:
        flat = pa.array(values.astype(dtype).reshape(-1))
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    table = pa.table(columns)
    metadata = {"eclip.fusion_weight": str(emb.fusion_weight)}
    identity = model_sha256 or emb.model_sha256
    if identity:
        metadata[PARQUET_KEY.decode()] = identity
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        # no dictionary for the vectors (every value differs): 2-3x faster to write and read
        pq.write_table(table, tmp, use_dictionary=["catalog_id"] if listings is not None
                       else False)
    return path


# A folder of Parquet parts (``eclip embed --engine ray``): part files in the format of
# :func:`write_embeddings` and a manifest naming them in order, written last (the commit point).
EMBEDDINGS_MANIFEST = "manifest.json"
EMBEDDINGS_FORMAT = "eclip-embeddings"
_VECTOR_COLUMNS = ("image_embedding", "text_embedding", "product_embedding")
_FUSED = "product_embedding"  # may be absent: computed from the two others when read
READ_BLOCK = 65_536  # rows of vectors decoded at a time


def write_embeddings_manifest(folder: str | Path, parts: list[tuple[str, int]],
                              fusion_weight: float, **extra) -> Path:
    """``folder/manifest.json``: the parts (file name, rows) in order and their total."""
    from eclip.atomic import write_json_atomic

    manifest = {"format": EMBEDDINGS_FORMAT, "version": 1,
                "rows": sum(rows for _, rows in parts), "fusion_weight": fusion_weight,
                "parts": [{"name": name, "rows": rows} for name, rows in parts], **extra}
    return write_json_atomic(Path(folder) / EMBEDDINGS_MANIFEST, manifest)


class StoredEmbeddings:
    """What ``eclip embed`` wrote (one Parquet file, or a folder of parts with its manifest, in
    the manifest's order), opened without reading its vectors: the product and catalog ids, the
    model's identity, the fusion weight and the dimensions, checked across the parts.
    :meth:`blocks` then reads the vectors a block of rows at a time, so that memory holds one
    block, not every vector (what ``eclip index --embeddings`` streams into an index)."""

    def __init__(self, path: str | Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from eclip.catalog.manifest import read_manifest
        from eclip.errors import EclipError

        self.path = path = Path(path)
        manifest: dict = {}
        if path.is_dir():
            parts = read_manifest(path, EMBEDDINGS_MANIFEST, format=EMBEDDINGS_FORMAT,
                                  what="embeddings manifest", command="eclip embed",
                                  part=lambda entry: int(entry["rows"]))
            files, manifest = list(zip(parts.files, parts.parts)), parts.data
        else:
            files = [(path, None)]
        self.files: list[Path] = []
        self.dims: dict[str, int] = {}
        ids, catalogs = [], []
        with_catalog: bool | None = None
        identities: set = set()
        self.fusion_weight = FUSION_WEIGHT
        self.stores_fused = True
        for number, (file, rows) in enumerate(files):
            try:
                handle = pq.ParquetFile(file)
                schema = handle.schema_arrow
                missing = [c for c in ("product_id",) + _VECTOR_COLUMNS
                           if c not in schema.names and c != _FUSED]
                if missing:
                    raise ValueError(f"it has no column {', '.join(missing)}")
                has_catalog = "catalog_id" in schema.names
                read = handle.read(columns=["product_id"] + (["catalog_id"] if has_catalog
                                                             else []))
            except (OSError, ValueError) as exc:
                raise EclipError(f"cannot read embeddings {file}: {exc}") from None
            if rows is not None and read.num_rows != rows:
                raise EclipError(f"{file} holds {read.num_rows} rows, the manifest says {rows}; "
                                 "run `eclip embed` again")
            names = [c for c in _VECTOR_COLUMNS if c in schema.names]
            if number == 0:
                self.stores_fused = _FUSED in names
            elif self.stores_fused != (_FUSED in names):
                raise EclipError(f"{file}: the parts disagree on storing {_FUSED}; run "
                                 f"`eclip embed` again")
            for name in names:
                dim = getattr(schema.field(name).type, "list_size", None)
                if dim is None:
                    raise EclipError(f"cannot read embeddings {file}: {name} is not a column "
                                     f"of fixed-size vectors")
                first = self.dims.setdefault(name, dim)
                if dim != first:
                    raise EclipError(f"{file}: {name} has {dim} dimensions, the first part "
                                     f"{first}; run `eclip embed` again")
            meta = schema.metadata or {}
            if number == 0:
                self.fusion_weight = float(meta.get(b"eclip.fusion_weight", FUSION_WEIGHT))
                with_catalog = has_catalog
            identities.add(meta.get(PARQUET_KEY))
            ids.extend(read.column("product_id").chunks)
            if with_catalog:
                catalogs.extend(read.column("catalog_id").chunks if has_catalog else
                                [pa.nulls(read.num_rows, pa.string())])
            self.files.append(file)
        if manifest.get(MANIFEST_KEY):
            identities.add(str(manifest[MANIFEST_KEY]).encode())
        identities.discard(None)
        if len(identities) > 1:
            raise EclipError(f"{path} holds vectors of {len(identities)} different models; run "
                             "`eclip embed` again into an empty folder")
        self.model_sha256 = identities.pop().decode() if identities else None
        # ids as Arrow strings: a few bytes a listing, where a list of Python strings is ~60
        self.ids = pa.chunked_array(ids, pa.string())
        self._catalogs = pa.chunked_array(catalogs, pa.string()) if with_catalog else None
        if files and not self.stores_fused:
            self.dims[_FUSED] = self.dims["image_embedding"] + self.dims["text_embedding"]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def product_ids(self) -> list[str]:
        return self.ids.to_pylist()

    @property
    def catalog_ids(self) -> list[str | None] | None:
        return self._catalogs.to_pylist() if self._catalogs is not None else None

    def blocks(self, rows: int = READ_BLOCK) -> Iterator[tuple[int, Embeddings]]:
        """``(first row, the vectors of the next rows)`` in order, at most ``rows`` at a time
        (a block does not span two parts); ``product_ids`` of a block are left empty."""
        import pyarrow.parquet as pq

        from eclip.errors import EclipError

        at = 0
        columns = [c for c in _VECTOR_COLUMNS if c != _FUSED or self.stores_fused]
        for file in self.files:
            try:
                batches = pq.ParquetFile(file).iter_batches(batch_size=max(1, rows),
                                                            columns=columns)
                for batch in batches:
                    n = batch.num_rows
                    image, text, *product = (
                        np.asarray(batch.column(name).flatten().to_numpy(zero_copy_only=False),
                                   np.float32).reshape(n, self.dims[name])
                        for name in columns)
                    product = product[0] if product else fuse(image, text, self.fusion_weight)
                    yield at, Embeddings([], image, text, product, self.fusion_weight,
                                         model_sha256=self.model_sha256)
                    at += n
            except (OSError, ValueError) as exc:
                raise EclipError(f"cannot read embeddings {file}: {exc}") from None


def read_embeddings(path: str | Path) -> tuple[Embeddings, list[str | None] | None]:
    """What ``eclip embed`` wrote, as :class:`Embeddings` and the catalog ids (None where the file
    has none): one Parquet file (the local engine), or a folder of parts with its manifest (the ray
    engine), read in the manifest's order. Everything in memory: :class:`StoredEmbeddings` reads
    it a block at a time."""
    stored = StoredEmbeddings(path)
    total = len(stored)
    out = {name: np.empty((total, stored.dims.get(name, 0)), np.float32)
           for name in _VECTOR_COLUMNS}
    for start, block in stored.blocks():
        for name, values in zip(_VECTOR_COLUMNS, (block.image, block.text, block.product)):
            out[name][start:start + len(values)] = values
    return Embeddings(stored.product_ids, *(out[name] for name in _VECTOR_COLUMNS),
                      stored.fusion_weight, model_sha256=stored.model_sha256), stored.catalog_ids
