"""``eclip mine-catalogs``: a catalog file in, the same catalog with mined catalog ids out.

The output is a JSONL catalog with the standard fields (image paths relative to the image root,
so it reads back with the same ``--image-root``), its ``catalog_id`` column filled where mining (or
the file) gave one, and a ``catalog_source`` column: ``given``, ``mined`` or null. Beside it,
``<out>.mining.json`` and ``<out>.mining.html``: group counts and sizes, the thresholds and how they
were chosen, and, where the file has true ids that mining did not use, pairwise precision, recall and
F1 with the precision-recall curve over the threshold rule's quantiles.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Callable

from eclip.atomic import write_text_atomic
from eclip.catalog.config import DataConfig
from eclip.catalog.load import load_catalog
from eclip.catalog.readers import write_listings
from eclip.errors import ConfigError
from eclip.mining.mine import MiningResult, mine_catalogs, summary
from eclip.model import load_model


def report_paths(out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    return out.with_name(out.name + ".mining.json"), out.with_name(out.name + ".mining.html")


def mine_catalog_file(model_dir: str | Path, data: DataConfig, out: str | Path, *,
                      source: str | None = None, progress: bool = True,
                      log: Callable[[str], None] = print) -> MiningResult:
    """Read ``data.catalog``, mine its catalogs with the model in ``model_dir`` (``source``:
    ``mined`` ignores the file's catalog ids and scores against them; ``given+mined`` keeps them
    and mines the rest; default: ``data.catalog_source`` where it is ``given+mined``, else
    ``mined``), and write the catalog to ``out`` with the report beside it."""
    if source is None:
        source = "given+mined" if data.catalog_source == "given+mined" else "mined"
    out = Path(out)
    if data.catalog and Path(data.catalog).resolve() == out.resolve():
        raise ConfigError(f"--out {out} is the catalog being read: write the mined catalog to "
                          "another file")
    read = load_catalog(data, progress=progress, log=log)
    model = load_model(model_dir)
    result = mine_catalogs(model, read.listings, data.mining, source=source, progress=progress,
                           log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_listings(result.listings, out, image_root=read.image_root,
                   extra=[{"catalog_source": s} for s in result.sources])
    json_path, html_path = report_paths(out)
    report = {**result.report, "catalog": str(data.catalog), "model": str(model_dir),
              "out": str(out)}
    write_text_atomic(json_path, json.dumps(report, indent=1) + "\n")
    write_text_atomic(html_path, report_html(report))
    log(f"wrote {out} (train on it with --image-root {read.image_root}), {json_path}, {html_path}")
    return result


def _pr_plot(curve: list[dict]) -> str:
    """The precision-recall curve as an inline PNG (an <img> tag)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    ax.plot([p["recall"] for p in curve], [p["precision"] for p in curve], marker="o")
    for p in curve:
        ax.annotate(str(p["quantile"]), (p["recall"], p["precision"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("pairwise recall")
    ax.set_ylabel("pairwise precision")
    ax.set_title("mined groups vs true catalog ids (labels: null quantile)", fontsize=9)
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return f'<img alt="precision-recall curve" src="data:image/png;base64,' \
           f'{base64.b64encode(buffer.getvalue()).decode("ascii")}">'


def report_html(report: dict) -> str:
    """A page of the mining report: the summary, group sizes, scores and the PR curve."""
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(size)}</td><td>{count}</td></tr>"
                   for size, count in report["group_sizes"].items())
    parts = [f"<h1>Mined catalogs</h1><p>{esc(summary(report))}</p>",
             "<h2>Catalog sizes</h2><table><tr><th>listings</th><th>catalogs</th></tr>"
             f"{rows}</table>"]
    scores = report.get("against_true_ids")
    if scores:
        parts.append("<h2>Against the true catalog ids</h2><table>"
                     + "".join(f"<tr><td>{esc(k)}</td><td>{v if isinstance(v, int) else f'{v:.3f}'}"
                               "</td></tr>" for k, v in scores.items()) + "</table>")
        curve = report.get("pr_curve") or []
        if curve:
            parts.append("<h2>Precision-recall over the threshold rule</h2>" + _pr_plot(curve))
            parts.append("<table><tr><th>null quantile</th><th>image</th><th>text</th>"
                         "<th>precision</th><th>recall</th><th>F1</th></tr>" + "".join(
                             f"<tr><td>{p['quantile']}</td><td>{p['image_threshold']:.3f}</td>"
                             f"<td>{p['text_threshold']:.3f}</td><td>{p['precision']:.3f}</td>"
                             f"<td>{p['recall']:.3f}</td><td>{p['f1']:.3f}</td></tr>"
                             for p in curve) + "</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>eclip: mined catalogs</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
