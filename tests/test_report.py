import json

from eclip.tasks.report import Report


def test_report_json_rows_and_markdown_bold_best(tmp_path):
    report = Report(title="t")
    report.add("retrieval", "text", "baseline", "R@10", 0.1)
    report.add("retrieval", "text", "eclip", "R@10", 0.8)
    report.add("category", "image", "eclip", "zero_shot_accuracy", 0.5)
    json_path, md_path = report.write(tmp_path)
    rows = json.loads(json_path.read_text())["rows"]
    assert rows[1] == {"task": "retrieval", "modality": "text", "model": "eclip", "metric": "R@10",
                       "value": 0.8, "std": None}
    md = md_path.read_text()
    assert "| text | R@10 | 0.100 | **0.800** |" in md
    # a cell with one model only is not bolded, a missing model shows a dash
    assert "| image | zero_shot_accuracy | – | 0.500 |" in md
    assert report.value("retrieval", "text", "eclip", "R@10") == 0.8
