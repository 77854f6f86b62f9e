"""The evaluation report: rows of (task, modality, model, metric, value), as JSON and Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    task: str
    modality: str  # "image", "text", "both", or a direction such as "text->image"
    model: str
    metric: str
    value: float
    std: float | None = None


@dataclass
class Report:
    title: str = "eclip evaluation"
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, task: str, modality: str, model: str, metric: str, value: float,
            std: float | None = None) -> None:
        self.rows.append(Row(task, modality, model, metric, float(value), std))

    def value(self, task: str, modality: str, model: str, metric: str) -> float:
        for row in self.rows:
            if (row.task, row.modality, row.model, row.metric) == (task, modality, model, metric):
                return row.value
        raise KeyError((task, modality, model, metric))

    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "meta": self.meta, "notes": self.notes,
                "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self) -> str:
        models = self.models()
        lines = [f"# {self.title}", ""]
        for task in dict.fromkeys(r.task for r in self.rows):
            lines += [f"## {task}", "", "| modality | metric | " + " | ".join(models) + " |",
                      "|---|---|" + "---|" * len(models)]
            keys = dict.fromkeys((r.modality, r.metric) for r in self.rows if r.task == task)
            for modality, metric in keys:
                cells = {r.model: r for r in self.rows
                         if (r.task, r.modality, r.metric) == (task, modality, metric)}
                best = max((c.value for c in cells.values()), default=None)
                shown = []
                for m in models:
                    if m not in cells:
                        shown.append("–")
                        continue
                    text = f"{cells[m].value:.3f}"
                    if cells[m].std is not None:
                        text += f" ± {cells[m].std:.3f}"
                    shown.append(f"**{text}**" if cells[m].value == best and len(cells) > 1 else text)
                lines.append(f"| {modality} | {metric} | " + " | ".join(shown) + " |")
            lines.append("")
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, md_path = directory / "report.json", directory / "report.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False), encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path
