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


def _compared_report(verdicts):
    from eclip.tasks.report import Comparison

    report = Report(title="t", headlines={"category": "probe_accuracy"}, references=["tfidf"])
    report.meta["bootstrap"] = {"resamples": 1000, "confidence": 0.95}
    for modality, (reference, verdict) in verdicts.items():
        for model, value in (("eclip", 0.8), ("clip", 0.7), ("baseline", 0.6), ("tfidf", 0.9)):
            report.add("category", modality, model, "probe_accuracy", value)
        delta, low, high = {"win": (0.1, 0.05, 0.15), "tie": (0.01, -0.02, 0.04),
                            "loss": (-0.05, -0.08, -0.02)}[verdict]
        report.comparisons.append(Comparison("category", modality, "eclip", reference,
                                             "probe_accuracy", delta, low, high, verdict))
        if reference == "clip":  # baseline: always a win here
            report.comparisons.append(Comparison("category", modality, "eclip", "baseline",
                                                 "probe_accuracy", 0.2, 0.1, 0.3, "win"))
    return report


def test_report_names_every_cell_the_subject_does_not_win(tmp_path):
    from types import SimpleNamespace

    from eclip.tasks.html import write_html

    report = _compared_report({"image": ("clip", "tie"), "text": ("clip", "win"),
                               "both": ("clip", "loss")})
    assert [(c["reference"], c["modality"], c["verdict"]) for c in report.not_won("category")] == [
        ("clip", "image", "tie"), ("clip", "both", "loss")]
    line = report.not_won_line("category")
    assert line == ("category: not shown — eclip does not win against clip: image +0.010 "
                    "[-0.020, +0.040] tie, both -0.050 [-0.080, -0.020] loss; these cells do not "
                    "count in the headline.")
    # the reference (tfidf, above eclip) is not a verdict cell: never named
    assert "tfidf" not in line
    json_path, md_path = report.write(tmp_path)
    md = md_path.read_text()
    assert f"  - {line}" in md  # under the task's verdict
    assert f"\n{line}\n" in md  # in the task's section
    assert f"  - {line}" in report.summary_markdown()
    data = json.loads(json_path.read_text())
    assert len(data["verdicts"]["category"]["not_won"]) == 2
    page = write_html(report, SimpleNamespace(figures={}, views=[], rows=lambda *_: []),
                      tmp_path / "r.html")
    assert "does not win against clip: image" in page.read_text()
    # every cell a win: nothing to name
    won = _compared_report({m: ("clip", "win") for m in ("image", "text", "both")})
    assert won.not_won("category") == [] and won.not_won_line("category") is None
    assert "not shown" not in won.to_markdown()


def test_report_without_intervals_names_margins_at_or_below_zero():
    report = Report(title="t", headlines={"adult": "pr_auc"}, references=["tfidf"])
    for modality, clip in (("image", 0.5), ("text", 0.7)):
        report.add("adult", modality, "eclip", "pr_auc", 0.6)
        report.add("adult", modality, "clip", "pr_auc", clip)
        report.add("adult", modality, "tfidf", "pr_auc", 0.9)
    assert report.not_won_line("adult") == ("adult: not shown — eclip does not win against clip: "
                                            "text -0.100, no interval; these cells do not count "
                                            "in the headline.")
