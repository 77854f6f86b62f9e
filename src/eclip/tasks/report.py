"""The evaluation report: rows of (task, modality, model, metric, value, std), as JSON and Markdown.

A task may have a *headline* metric: the Markdown then opens the task with a table of that metric
(modalities as rows, models as columns, the best in bold) and a one-line verdict that gives the
margins of the ``subject`` model (e.g. eclip) over every other model, followed by the table of all
metrics. Reference models (e.g. the TF-IDF reference) get margins too but do not decide the verdict.

*Comparisons* (``eclip.tasks.bootstrap``) give a difference model - reference with a confidence
interval from a paired bootstrap over test catalogs and a verdict (win: the interval is above 0,
tie: it covers 0, loss: it is below 0). Where a task has them, its verdict line counts only wins,
and the verdict table shows every (task, modality) x pair on the headline metric at a glance.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eclip.atomic import write_text_atomic

# Counts describe a result rather than rank models: they are never bolded.
UNRANKED_METRICS = frozenset({"tp", "fp", "fn", "tn", "clusters"})
MODALITY_ORDER = ("image", "text", "both")


@dataclass
class Row:
    task: str
    modality: str  # "image", "text", "both", or a direction such as "text->image"
    model: str
    metric: str
    value: float
    std: float | None = None
    # rows of a model trained with several seeds (eclip.tasks.seeds): value is the mean over the
    # seeds, seed_std the sample std across them, seeds their number; None for one model
    seed_std: float | None = None
    seeds: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as JSON; ``seed_std`` and ``seeds`` only where the row folds several seeds."""
        out = asdict(self)
        if self.seeds is None:
            del out["seed_std"], out["seeds"]
        return out


@dataclass
class Comparison:
    """``model`` minus ``reference`` on one metric of one (task, modality), with its interval."""

    task: str
    modality: str
    model: str
    reference: str
    metric: str
    delta: float
    ci_low: float
    ci_high: float
    verdict: str  # "win" (interval above 0), "tie" (covers 0), "loss" (below 0), "n/a"

    @property
    def pair(self) -> str:
        return f"{self.model} − {self.reference}"

    def to_json(self) -> dict[str, Any]:
        """Undefined numbers (NaN: the metric had no value on the resamples) become null."""
        return {k: (None if isinstance(v, float) and v != v else v)
                for k, v in asdict(self).items()}


VERDICTS = ("win", "tie", "loss")


def format_value(value: float, std: float | None = None) -> str:
    text = f"{value:.3f}"
    return text + (f" ± {std:.3f}" if std is not None else "")


def format_row(row: Row) -> str:
    """``0.712 ± 0.010`` (± the probe seeds' std), or for a row that folds several training
    seeds ``0.712 ± 0.008 (3 seeds)``: the mean over the seeds ± the std across them."""
    if row.seeds is None:
        return format_value(row.value, row.std)
    std = row.seed_std
    spread = "n/a" if std is None or std != std else f"{std:.3f}"
    return f"{row.value:.3f} ± {spread} ({row.seeds} seeds)"


def format_interval(c: Comparison, verdict: bool = True) -> str:
    """``+0.043 [+0.021, +0.066] win``."""
    if c.delta != c.delta:  # NaN: the metric is undefined on test
        text = "n/a"
    elif c.ci_low != c.ci_low or c.ci_high != c.ci_high:
        text = f"{c.delta:+.3f} [n/a]"
    else:
        text = f"{c.delta:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
    return text + (f" {c.verdict}" if verdict else "")


@dataclass
class Report:
    title: str = "eclip evaluation"
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    headlines: dict[str, str] = field(default_factory=dict)  # task -> metric of its verdict
    subject: str = "eclip"  # the model the verdicts speak about
    references: list[str] = field(default_factory=list)  # compared, but not part of the verdict
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it did not run
    comparisons: list[Comparison] = field(default_factory=list)  # bootstrap intervals
    seed_rows: list[Row] = field(default_factory=list)  # per training seed, before folding

    def add(self, task: str, modality: str, model: str, metric: str, value: float,
            std: float | None = None) -> None:
        self.rows.append(Row(task, modality, model, metric, float(value),
                             None if std is None else float(std)))

    def find(self, task: str, modality: str, model: str, metric: str) -> Row | None:
        for row in self.rows:
            if (row.task, row.modality, row.model, row.metric) == (task, modality, model, metric):
                return row
        return None

    def value(self, task: str, modality: str, model: str, metric: str) -> float:
        row = self.find(task, modality, model, metric)
        if row is None:
            raise KeyError((task, modality, model, metric))
        return row.value

    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.rows))

    def roles_line(self) -> str | None:
        """Which model is the subject, which it is compared with, which are references."""
        others = [m for m in self.models() if m != self.subject and m not in self.references]
        if self.subject not in self.models() or not others:
            return None
        compared = list(dict.fromkeys(c.reference for c in self.comparisons
                                      if c.model == self.subject)) or others
        references = [m for m in self.references if m in self.models()]
        line = (f"Subject: **{self.subject}**, compared with {', '.join(compared)} (each "
                f"difference is {self.subject} − other; `eclip eval --subject NAME` picks another)")
        if references:
            line += f". References, shown but outside the verdicts: {', '.join(references)}"
        return line + "."

    def modalities(self, task: str, metric: str | None = None) -> list[str]:
        found = dict.fromkeys(r.modality for r in self.rows
                              if r.task == task and (metric is None or r.metric == metric))
        return sorted(found, key=lambda m: (MODALITY_ORDER.index(m) if m in MODALITY_ORDER
                                            else len(MODALITY_ORDER), list(found).index(m)))

    # ---------------------------------------------------------------------------------- verdicts
    def margins(self, task: str) -> dict[str, dict[str, float]]:
        """``{other model: {modality: subject value - other value}}`` on the task's headline."""
        metric = self.headlines.get(task)
        if metric is None:
            return {}
        out: dict[str, dict[str, float]] = {}
        for modality in self.modalities(task, metric):
            mine = self.find(task, modality, self.subject, metric)
            if mine is None:
                continue
            for row in self.rows:
                if ((row.task, row.modality, row.metric) == (task, modality, metric)
                        and row.model != self.subject):
                    out.setdefault(row.model, {})[modality] = mine.value - row.value
        return out

    def headline_comparisons(self, task: str) -> list[Comparison]:
        """The subject's comparisons on the task's headline metric."""
        metric = self.headlines.get(task)
        return [c for c in self.comparisons
                if c.task == task and c.metric == metric and c.model == self.subject]

    def pairs(self) -> list[str]:
        """Every compared pair, ``model − reference``, in order of appearance."""
        return list(dict.fromkeys(c.pair for c in self.comparisons))

    def tally(self, comparisons: list[Comparison]) -> dict[str, int]:
        return {v: sum(c.verdict == v for c in comparisons) for v in VERDICTS}

    def beats_all(self, task: str) -> bool | None:
        """Whether the subject beats every compared model in every modality (None: no data).

        With comparisons, a cell counts only when its interval is above 0 (a win); without them
        (no bootstrap), the point margins over every non-reference model decide."""
        compared = self.headline_comparisons(task)
        if compared:
            return all(c.verdict == "win" for c in compared)
        margins = {m: d for m, d in self.margins(task).items() if m not in self.references}
        if not margins:
            return None
        return all(d > 0 for per_modality in margins.values() for d in per_modality.values())

    def verdict(self, task: str) -> str | None:
        """One line: does the subject beat the others in every modality, with the margins (and
        their intervals, where the task has comparisons: then only wins count)."""
        margins = self.margins(task)
        compared = self.headline_comparisons(task)
        if not margins and not compared:
            return None
        parts = []
        by_reference: dict[str, list[Comparison]] = {}
        for c in compared:
            by_reference.setdefault(c.reference, []).append(c)
        for other, cells in by_reference.items():
            wins = sum(c.verdict == "win" for c in cells)
            shown = ", ".join(f"{c.modality} {format_interval(c)}" for c in cells)
            parts.append(f"{other} in {wins}/{len(cells)} ({shown})")
        for other, per_modality in margins.items():
            if other in by_reference:
                continue
            shown = ", ".join(f"{m} {d:+.3f}" for m, d in per_modality.items())
            if compared:  # margins without an interval: shown, never counted
                kind = "reference" if other in self.references else "not compared"
                parts.append(f"{other} ({kind}, no interval: {shown})")
            else:
                wins = sum(d > 0 for d in per_modality.values())
                parts.append(f"{other} in {wins}/{len(per_modality)} ({shown})")
        answer = {True: "yes", False: "no", None: "n/a"}[self.beats_all(task)]
        beats = "wins (interval above 0) against " if compared else "beats "
        return (f"{task} ({self.headlines[task]}): {answer} — {self.subject} {beats}"
                + "; ".join(parts))

    def not_won(self, task: str) -> list[dict[str, Any]]:
        """The subject's headline cells that are not wins: with comparisons, every pair whose
        interval is not above 0 (tie or loss); without them, every non-reference margin <= 0."""
        compared = self.headline_comparisons(task)
        if compared:
            return [{"reference": c.reference, "modality": c.modality, "verdict": c.verdict,
                     "shown": format_interval(c)} for c in compared if c.verdict != "win"]
        return [{"reference": other, "modality": m, "verdict": "no margin",
                 "shown": f"{d:+.3f}, no interval"}
                for other, per_modality in self.margins(task).items()
                if other not in self.references for m, d in per_modality.items() if d <= 0]

    def not_won_line(self, task: str) -> str | None:
        """One line naming where the subject does not win (None: it wins every cell)."""
        cells = self.not_won(task)
        if not cells:
            return None
        by_reference: dict[str, list[str]] = {}
        for cell in cells:
            by_reference.setdefault(cell["reference"], []).append(
                f"{cell['modality']} {cell['shown']}")
        shown = "; ".join(f"against {other}: {', '.join(where)}"
                          for other, where in by_reference.items())
        return (f"{task}: not shown — {self.subject} does not win {shown}; these cells do not "
                "count in the headline.")

    def verdict_lines(self, task: str) -> list[str]:
        """A task's verdict and, under it, its "not shown" line (none without a verdict): what
        the Markdown and the HTML report print for the task."""
        verdict = self.verdict(task)
        if not verdict:
            return []
        missing = self.not_won_line(task)
        return [verdict, missing] if missing else [verdict]

    def _verdict_bullets(self, tasks: list[str]) -> list[str]:
        lines = []
        for task in tasks:
            for depth, line in enumerate(self.verdict_lines(task)):
                lines.append(("  - " if depth else "- ") + line)
        return lines

    def verdict_table(self) -> list[str]:
        """Markdown: rows task x modality (headline metrics), a column per compared pair, cells
        ``delta [low, high] verdict``; a last row counts wins / ties / losses per pair."""
        pairs = self.pairs()
        cells = {(c.task, c.modality, c.pair): c for c in self.comparisons
                 if c.metric == self.headlines.get(c.task)}
        if not cells:
            return []
        keys = list(dict.fromkeys((c.task, c.modality) for c in self.comparisons
                                  if (c.task, c.modality, c.pair) in cells))
        lines = ["| task (metric) | modality | " + " | ".join(pairs) + " |",
                 "|---|---|" + "---|" * len(pairs)]
        for task, modality in keys:
            shown = [format_interval(cells[(task, modality, p)]) if (task, modality, p) in cells
                     else "–" for p in pairs]
            lines.append(f"| {task} ({self.headlines[task]}) | {modality} | "
                         + " | ".join(shown) + " |")
        totals = []
        for p in pairs:
            count = self.tally([c for c in cells.values() if c.pair == p])
            totals.append(" · ".join(f"{count[v]} {v}" for v in VERDICTS))
        lines.append("| **all** | | " + " | ".join(totals) + " |")
        return lines

    def verdict_table_caption(self) -> str:
        boot = self.meta.get("bootstrap", {})
        level = f"{boot['confidence']:.0%}" if "confidence" in boot else "95%"
        return (f"Headline metric of each task, model − reference on test, {level} interval from "
                f"{boot.get('resamples', '?')} paired bootstrap resamples of the test catalogs "
                "(both models on the same resamples). win: the interval is above 0; tie: it "
                "covers 0; loss: it is below 0." + self._seeds_caption())

    def _seeds_caption(self) -> str:
        seeds = self.meta.get("training_seeds")
        if not seeds:
            return ""
        shown = ", ".join(f"{name} {n}" for name, n in seeds.items())
        return (f" Training seeds ({shown}): the difference of the means over the seeds, every "
                "seed on the same resamples; the spread across seeds is the ± of the tables.")

    def task_comparisons(self, task: str) -> list[str]:
        """Markdown table of every comparison of ``task`` (every metric with kept outcomes)."""
        found = [c for c in self.comparisons if c.task == task]
        if not found:
            return []
        lines = ["| modality | metric | pair | difference [interval] verdict |",
                 "|---|---|---|---|"]
        lines += [f"| {c.modality} | {c.metric} | {c.pair} | {format_interval(c)} |"
                  for c in found]
        return lines

    # ------------------------------------------------------------------------------------ output
    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "meta": self.meta, "notes": self.notes,
                "headlines": self.headlines, "subject": self.subject,
                "references": self.references, "skipped": self.skipped,
                "verdicts": {t: {"line": self.verdict(t), "beats_all": self.beats_all(t),
                                 "margins": self.margins(t), "not_won": self.not_won(t),
                                 **self.tally(self.headline_comparisons(t))}
                             for t in self.tasks() if t in self.headlines},
                "comparisons": [c.to_json() for c in self.comparisons],
                "rows": [r.to_json() for r in self.rows],
                **({"seed_rows": [asdict(r) for r in self.seed_rows]} if self.seed_rows else {})}

    def headline_table(self, task: str) -> list[str]:
        metric = self.headlines[task]
        models = [m for m in self.models()
                  if any(r.model == m and r.task == task and r.metric == metric
                         for r in self.rows)]
        lines = [f"| {metric} | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for modality in self.modalities(task, metric):
            cells = {m: self.find(task, modality, m, metric) for m in models}
            lines.append(f"| {modality} | " + " | ".join(_cells(cells, models, metric)) + " |")
        return lines

    def summary_markdown(self) -> str:
        """The title, the verdicts, the skipped tasks and each task's headline table."""
        lines = [f"# {self.title}", ""]
        roles = self.roles_line()
        lines += [roles, ""] if roles else []
        lines += self._verdict_bullets(self.tasks()) + [""]
        table = self.verdict_table()
        if table:
            lines += ["## Verdict table", "", self.verdict_table_caption(), ""] + table + [""]
        lines += [f"- skipped {task}: {reason}" for task, reason in self.skipped.items()]
        for task in self.tasks():
            if task in self.headlines and self.modalities(task, self.headlines[task]):
                lines += ["", f"## {task}", ""] + self.headline_table(task)
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        models = self.models()
        lines = [f"# {self.title}", ""]
        roles = self.roles_line()
        lines += [roles, ""] if roles else []
        verdicts = [self.verdict(t) for t in self.tasks() if t in self.headlines]
        if any(verdicts):
            lines += ["## Verdicts", ""] + self._verdict_bullets(
                [t for t in self.tasks() if t in self.headlines]) + [""]
        table = self.verdict_table()
        if table:
            lines += ["## Verdict table", "", self.verdict_table_caption(), ""] + table + [""]
        if self.skipped:
            lines += ["## Skipped tasks", ""]
            lines += [f"- {task}: {reason}" for task, reason in self.skipped.items()] + [""]
        for task in self.tasks():
            lines += [f"## {task}", ""]
            if task in self.headlines and any(r.task == task and r.metric == self.headlines[task]
                                              for r in self.rows):
                lines += self.headline_table(task) + [""]
                verdict = self.verdict(task)
                if verdict:
                    lines += [f"Verdict: {verdict}", ""]
                    missing = self.not_won_line(task)
                    if missing:
                        lines += [missing, ""]
            compared = self.task_comparisons(task)
            if compared:
                lines += compared + [""]
            lines += ["| modality | metric | " + " | ".join(models) + " |",
                      "|---|---|" + "---|" * len(models)]
            keys = dict.fromkeys((r.modality, r.metric) for r in self.rows if r.task == task)
            for modality, metric in keys:
                cells = {r.model: r for r in self.rows
                         if (r.task, r.modality, r.metric) == (task, modality, metric)}
                lines.append(f"| {modality} | {metric} | "
                             + " | ".join(_cells(cells, models, metric)) + " |")
            lines.append("")
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        directory = Path(directory)
        json_path, md_path = directory / "report.json", directory / "report.md"
        write_text_atomic(json_path, json.dumps(self.to_json(), indent=2, ensure_ascii=False))
        write_text_atomic(md_path, self.to_markdown())
        return json_path, md_path


def ranked_cells(cells: dict[str, Row | None], models: list[str],
                 metric: str) -> list[tuple[str, bool]]:
    """Per model in order: the formatted value ('–' if absent) and whether it is the best of two or
    more (counts are never ranked)."""
    present = [c for c in cells.values() if c is not None]
    best = max((c.value for c in present), default=None)
    rank = len(present) > 1 and metric not in UNRANKED_METRICS
    out = []
    for m in models:
        cell = cells.get(m)
        if cell is None:
            out.append(("–", False))
        else:
            out.append((format_row(cell), rank and cell.value == best))
    return out


def _cells(cells: dict[str, Row | None], models: list[str], metric: str) -> list[str]:
    return [f"**{text}**" if best else text for text, best in ranked_cells(cells, models, metric)]
