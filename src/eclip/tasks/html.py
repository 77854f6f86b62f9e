"""``report.html``: the report as one self-contained page, with plots (inline PNG) a person can read.

Sections: the verdicts as a task x modality grid (with bootstrap comparisons: the verdict table,
a column per compared pair, each cell's difference, interval and win / tie / loss), then per task
its headline table, its verdict, its plots and (folded) every metric and every comparison. Plots:
confusion matrices of the top-level categories, the precision-recall curves of matching and adult
recognition, a t-SNE map of test listings coloured by top-level category, and example clusters of
the subject model as strips of listing photos.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from eclip.atomic import write_text_atomic
from eclip.catalog.images import load_image
from eclip.tasks.context import TaskContext
from eclip.tasks.report import (MODALITY_ORDER, VERDICTS, Comparison, Report, format_interval,
                                ranked_cells)
from eclip.tasks.seeds import base_name

PALETTE = ("#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22")
THUMB = 72  # px, photos in cluster strips
STRIP_MEMBERS = 10
EXAMPLE_CLUSTERS = 6

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right} th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.meta{color:#666;font-size:.9em} .verdict{background:#f7f7f2;padding:.5em .8em;border-left:4px solid #999}
.win{background:#dff3df} .part,.tie{background:#fff4d6} .loss{background:#f9dcdc}
.plot{max-width:100%;margin:.4em 0} details{margin:.6em 0} summary{cursor:pointer;color:#555}
.strip{display:flex;align-items:center;gap:4px;margin:.5em 0;flex-wrap:wrap}
.strip img{width:72px;height:72px;border:3px solid #2ca02c;border-radius:3px}
.strip img.other{border-color:#d62728} .strip .cap{font-size:.85em;color:#444;width:170px}
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" src="data:image/png;base64,{data}">'


def _colors(names: list[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _table(report: Report, task: str, metric: str | None = None) -> str:
    """The headline table (``metric``) or the table of all metrics of ``task``."""
    models = [m for m in report.models() if any(r.task == task and r.model == m and
                                                 (metric is None or r.metric == metric)
                                                 for r in report.rows)]
    if metric is None:
        keys = list(dict.fromkeys((r.modality, r.metric) for r in report.rows if r.task == task))
        head = "<tr><th>modality</th><th>metric</th>"
    else:
        keys = [(m, metric) for m in report.modalities(task, metric)]
        head = f"<tr><th>{html.escape(metric)}</th>"
    rows = [head + "".join(f"<th>{html.escape(m)}</th>" for m in models) + "</tr>"]
    for modality, name in keys:
        cells = {m: report.find(task, modality, m, name) for m in models}
        shown = [f"<b>{html.escape(text)}</b>" if best else html.escape(text)
                 for text, best in ranked_cells(cells, models, name)]
        first = f"<td>{html.escape(modality)}</td>" + (
            f"<td>{html.escape(name)}</td>" if metric is None else "")
        rows.append("<tr>" + first + "".join(f"<td>{c}</td>" for c in shown) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _comparison_cell(c: Comparison | None) -> str:
    if c is None:
        return "<td>–</td>"
    css = c.verdict if c.verdict in VERDICTS else "part"
    return f'<td class="{css}">{html.escape(format_interval(c))}</td>'


def verdict_table(report: Report) -> str:
    """Rows task x modality (headline metrics), a column per compared pair, cells coloured by
    verdict; a last row counts the wins, ties and losses of each pair."""
    pairs = report.pairs()
    cells = {(c.task, c.modality, c.pair): c for c in report.comparisons
             if c.metric == report.headlines.get(c.task)}
    if not cells:
        return ""
    keys = list(dict.fromkeys((t, m) for t, m, _ in cells))
    rows = ["<tr><th>task (headline metric)</th><th>modality</th>"
            + "".join(f"<th>{html.escape(p)}</th>" for p in pairs) + "</tr>"]
    for task, modality in keys:
        rows.append(f"<tr><td>{html.escape(task)} ({html.escape(report.headlines[task])})</td>"
                    f"<td>{html.escape(modality)}</td>"
                    + "".join(_comparison_cell(cells.get((task, modality, p))) for p in pairs)
                    + "</tr>")
    totals = []
    for p in pairs:
        count = report.tally([c for c in cells.values() if c.pair == p])
        totals.append(" · ".join(f"{count[v]} {v}" for v in VERDICTS))
    rows.append("<tr><th>all</th><th></th>" + "".join(f"<th>{t}</th>" for t in totals) + "</tr>")
    return ("<table>" + "".join(rows) + "</table>"
            f'<p class="meta">{html.escape(report.verdict_table_caption())} Green: win; yellow: '
            "tie; red: loss.</p>")


def _task_comparisons(report: Report, task: str) -> str:
    found = [c for c in report.comparisons if c.task == task]
    if not found:
        return ""
    rows = ["<tr><th>modality</th><th>metric</th><th>pair</th><th>difference [interval] verdict"
            "</th></tr>"]
    rows += [f"<tr><td>{html.escape(c.modality)}</td><td>{html.escape(c.metric)}</td>"
             f"<td>{html.escape(c.pair)}</td>{_comparison_cell(c)}</tr>" for c in found]
    return (f"<details><summary>{html.escape(task)}: every comparison</summary><table>"
            + "".join(rows) + "</table></details>")


def _verdict_grid(report: Report) -> str:
    """Task x modality: the subject's margin over each non-reference model, coloured by outcome
    (the verdict table instead, where the report has bootstrap comparisons)."""
    table = verdict_table(report)
    if table:
        return table
    tasks = [t for t in report.tasks() if report.margins(t)]
    if not tasks:
        return ""
    modalities = [m for m in MODALITY_ORDER if any(m in d for t in tasks
                                                   for d in report.margins(t).values())]
    rows = ["<tr><th>task (headline metric)</th>" + "".join(f"<th>{m}</th>" for m in modalities)
            + "</tr>"]
    for task in tasks:
        margins = {other: d for other, d in report.margins(task).items()
                   if other not in report.references}
        cells = []
        for modality in modalities:
            found = {o: d[modality] for o, d in margins.items() if modality in d}
            if not found:
                cells.append("<td>–</td>")
                continue
            wins = sum(v > 0 for v in found.values())
            css = "win" if wins == len(found) else "part" if wins else "loss"
            text = "<br>".join(f"vs {html.escape(o)} {v:+.3f}" for o, v in found.items())
            cells.append(f'<td class="{css}">{text}</td>')
        rows.append(f"<tr><td>{html.escape(task)} ({html.escape(report.headlines[task])})</td>"
                    + "".join(cells) + "</tr>")
    legend = ('<p class="meta">Margins of <b>' + html.escape(report.subject) + "</b> on each "
              "task's headline metric (test split). Green: beats every model; yellow: some; "
              "red: none. References (" + html.escape(", ".join(report.references))
              + ") are in the task sections.</p>")
    return "<table>" + "".join(rows) + "</table>" + legend


# ------------------------------------------------------------------------------------------ plots


def confusion_plot(ctx: TaskContext, modality: str = "both") -> str:
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    found = {m: v for (m, mod), v in ctx.figures.get("category_confusion", {}).items()
             if mod == modality}
    if not found:
        return ""
    labels = sorted({t for truth, _ in found.values() for t in truth})
    fig, axes = plt.subplots(1, len(found), figsize=(3.6 * len(found), 3.6), squeeze=False)
    for ax, (model, (truth, predicted)) in zip(axes[0], found.items()):
        matrix = confusion_matrix(list(truth), list(predicted), labels=labels).astype(float)
        matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels if ax is axes[0][0] else [], fontsize=7)
        ax.set_title(f"{model} ({modality})", fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
    axes[0][0].set_ylabel("true top-level category", fontsize=8)
    fig.suptitle("Top-level category, linear probe (seed 0), rows normalised", fontsize=10)
    return _png(fig)


def pr_plot(curves: dict, title: str) -> str:
    """One panel per modality, one precision-recall curve per model."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    if not curves:
        return ""
    modalities = [m for m in MODALITY_ORDER if any(mod == m for _, mod in curves)]
    colors = _colors(list(dict.fromkeys(model for model, _ in curves)))
    fig, axes = plt.subplots(1, len(modalities), figsize=(3.8 * len(modalities), 3.4),
                             squeeze=False)
    for ax, modality in zip(axes[0], modalities):
        for (model, mod), (labels, scores) in curves.items():
            if mod != modality:
                continue
            precision, recall, _ = precision_recall_curve(labels, scores)
            ap = average_precision_score(labels, scores)
            ax.plot(recall, precision, color=colors[model], lw=1.5, label=f"{model} ({ap:.3f})")
        ax.set_title(modality, fontsize=10)
        ax.set_xlabel("recall", fontsize=9)
        ax.set_xlim(0, 1.0)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left", title="model (PR-AUC)", title_fontsize=7)
    axes[0][0].set_ylabel("precision", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def tsne_plot(ctx: TaskContext, modality: str = "both") -> str:
    """t-SNE of a seeded sample of test listings per dual encoder, coloured by top-level category."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    test = ctx.rows("test", lambda x: bool(x.category))
    views = [v for v in ctx.views if v.kind != "tfidf" and modality in v.task]
    if len(test) < 10 or not views:
        return ""
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(test, size=min(len(test), ctx.config.map_points), replace=False))
    tops = [ctx.splits.listings[i].top_category for i in sample]
    colors = _colors(sorted(set(tops)))
    fig, axes = plt.subplots(1, len(views), figsize=(3.8 * len(views), 3.9), squeeze=False)
    for ax, view in zip(axes[0], views):
        points = TSNE(n_components=2, perplexity=min(30.0, (len(sample) - 1) / 3), init="pca",
                      max_iter=500, random_state=0).fit_transform(
            np.asarray(view.task[modality][sample], dtype=np.float32))
        ax.scatter(points[:, 0], points[:, 1], s=7, c=[colors[t] for t in tops], linewidths=0)
        ax.set_title(f"{view.name} ({modality}, {view.kind})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=t) for t, c in colors.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(colors), 4), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, -0.08))
    fig.suptitle(f"t-SNE of {len(sample)} test listings, coloured by top-level category",
                 fontsize=10)
    return _png(fig)


def _thumbnail(path: str) -> str:
    try:
        image = load_image(path)
    except Exception:  # an unreadable photo leaves a blank square, never a failed report
        return ""
    image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def cluster_strips(ctx: TaskContext, model: str, modality: str = "both") -> str:
    """Example predicted clusters: the largest ones and a few drawn at random, as photo strips.

    A green frame marks members of the cluster's most common catalog, a red one the others.
    """
    found = ctx.figures.get("clusters", {}).get((model, modality))
    if found is None:
        return ""
    rows, predicted = found
    members: dict[int, list[int]] = {}
    for row, label in zip(rows, predicted):
        members.setdefault(int(label), []).append(int(row))
    multi = sorted((c for c in members if len(members[c]) > 1),
                   key=lambda c: (-len(members[c]), c))
    if not multi:
        return ""
    chosen = multi[:EXAMPLE_CLUSTERS // 2]
    rest = multi[EXAMPLE_CLUSTERS // 2:]
    rng = np.random.default_rng(0)
    chosen += [rest[i] for i in sorted(rng.choice(len(rest), size=min(len(rest),
                                                                       EXAMPLE_CLUSTERS - len(chosen)),
                                                  replace=False))]
    out = []
    listings = ctx.splits.listings
    for cluster in chosen:
        rows_in = members[cluster]
        groups = [listings[i].group_id for i in rows_in]
        main = max(set(groups), key=groups.count)
        purity = groups.count(main) / len(groups)
        caption = (f"{len(rows_in)} listings, {len(set(groups))} catalog(s), "
                   f"purity {purity:.2f}")
        images = []
        for i in rows_in[:STRIP_MEMBERS]:
            css = "" if listings[i].group_id == main else ' class="other"'
            title = html.escape(listings[i].title, quote=True)
            images.append(f'<img{css} title="{title}" src="{_thumbnail(listings[i].images[0])}">')
        more = f"<span>+{len(rows_in) - STRIP_MEMBERS}</span>" if len(rows_in) > STRIP_MEMBERS else ""
        out.append(f'<div class="strip"><span class="cap">{caption}</span>{"".join(images)}'
                   f"{more}</div>")
    return (f"<h3>Example clusters: {html.escape(model)} ({modality})</h3>"
            '<p class="meta">The largest predicted clusters and a few drawn at random. Green frame: '
            "the cluster's most common catalog; red: another catalog. Hover for the title.</p>"
            + "".join(out))


# ------------------------------------------------------------------------------------------ page


def write_html(report: Report, ctx: TaskContext, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    plots = {
        "category": [confusion_plot(ctx), tsne_plot(ctx)],
        "matching": [pr_plot(ctx.figures.get("matching_scores", {}),
                             "Matching: precision-recall of the cosine similarity on test pairs")],
        "adult": [pr_plot(ctx.figures.get("adult_scores", {}),
                          "Adult products: precision-recall of the probe (seed 0) on test")],
        "clustering": [cluster_strips(ctx, next(
            (m for m in [report.subject] + [v.name for v in ctx.views  # a seed of it, or any
                                            if base_name(v.name) == report.subject]
             + [v.name for v in ctx.views if v.kind == "joint"]
             if (m, "both") in ctx.figures.get("clusters", {})), report.subject))],
    }
    meta = report.meta
    splits = meta.get("splits", {})
    parts = [f"<h1>{html.escape(report.title)}</h1>",
             f'<p class="meta">models: {html.escape(", ".join(report.models()))} · test listings: '
             f"{splits.get('test', '?')} · splits from {html.escape(str(meta.get('split_source')))}"
             "</p>", "<h2>Verdicts</h2>", _verdict_grid(report)]
    if report.skipped:
        parts.append("<h2>Skipped tasks</h2><ul>" + "".join(
            f"<li><b>{html.escape(t)}</b>: {html.escape(r)}</li>"
            for t, r in report.skipped.items()) + "</ul>")
    for task in report.tasks():
        parts.append(f"<h2>{html.escape(task)}</h2>")
        if task in report.headlines and report.modalities(task, report.headlines[task]):
            parts.append(_table(report, task, report.headlines[task]))
            parts += [f'<p class="verdict">{html.escape(line)}</p>'
                      for line in report.verdict_lines(task)]
        parts += [p for p in plots.get(task, []) if p]
        parts.append(_task_comparisons(report, task))
        parts.append(f"<details><summary>all {html.escape(task)} metrics</summary>"
                     f"{_table(report, task)}</details>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>"
                                                    for n in report.notes) + "</ul>")
    page = ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>"
            + "".join(parts) + "</body></html>")
    return write_text_atomic(path, page)
