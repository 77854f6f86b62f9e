"""Read the catalog a recipe's ``data`` section names, with its summary and its bad-row report.

Every command that reads a catalog comes through :func:`load_catalog`: the same column mapping, the
same summary line, one report file name (``bad_rows.json``) beside what the command writes, and a
clear error when no row is usable (rather than an empty output and exit status 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from eclip.catalog.config import DataConfig
from eclip.catalog.readers import CatalogRead, read_catalog
from eclip.errors import CatalogError, ConfigError

BAD_ROWS_FILE = "bad_rows.json"


def load_catalog(data: DataConfig, *, report_dir: str | Path | None = None,
                 require_listings: bool = True, check_images: bool = True,
                 progress: bool = True, log: Callable[[str], None] = print) -> CatalogRead:
    """Read ``data.catalog`` (validated, bad rows skipped and counted, or the first one raised with
    ``data.strict``); print its summary; with ``report_dir``, write ``report_dir/bad_rows.json``
    (every issue with file, row, line, product id, field and reason). Images of more than
    ``data.max_pixels`` are used at reduced size (:mod:`eclip.catalog.images`); training decodes
    with the same bound (``ListingDataset(max_pixels=)``); embedding and the index's thumbnails
    still use the default limit. ``check_images=False`` leaves decoding checks
    to a caller that decodes every image anyway (``eclip prepare``)."""
    if not data.catalog:
        raise ConfigError("no catalog given: pass --catalog FILE or set data.catalog in the recipe")
    read = read_catalog(data.catalog, image_root=data.image_root,
                        column_map=data.column_map or None, strict=data.strict,
                        check_images=check_images, progress=progress,
                        max_pixels=data.max_pixels)
    log(read.summary())
    report = None
    if report_dir is not None:
        report = Path(report_dir) / BAD_ROWS_FILE
        report.parent.mkdir(parents=True, exist_ok=True)
        read.write_report(report)
        if read.issues:
            log(f"bad-row report: {report}")
    if require_listings and not read.listings:
        where = f" (every issue is in {report})" if report is not None else ""
        raise CatalogError(f"no usable listings: all {read.total_rows} rows were skipped{where}",
                           file=str(data.catalog))
    return read
