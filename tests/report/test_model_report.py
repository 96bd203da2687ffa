"""The model section's tables and plots (report/model.py, report/curves.py, model/plots.py)."""

from __future__ import annotations

from mlc_pipeline.report.curves import curve_markdown
from mlc_pipeline.report.model import md_to_html_table


def curve(chosen: int = 1) -> list[dict]:
    """An operating curve as training records it (model.metrics.operating_curve), highest cap first."""
    points = [(0.10, 0.82, 0.09, 0.30), (0.05, 0.80, 0.05, 0.21), (0.0, 0.70, 0.0, 0.08)]
    return [{"valid_other_accepted": cap, "macro_f1": f1, "unknown_accepted": other, "probe_accepted": probe,
             "chosen": i == chosen} for i, (cap, f1, other, probe) in enumerate(points)]


def test_the_chosen_curve_point_is_bold_in_html_and_in_markdown():
    """The Prefect artifact (markdown) writes **chosen**; the HTML page printed those asterisks."""
    md = curve_markdown(curve())
    assert "| **chosen** |" in md
    page = md_to_html_table(md)
    assert "**" not in page and page.count("<td><b>chosen</b></td>") == 1
    rows = page.split("<tr>")
    assert "<b>chosen</b>" in rows[3] and "5.0%" in rows[3]           # after the header and the 10% row
    assert md_to_html_table("| a |\n|---|\n| 2 ** 3 |") == "<table><tr><th>a</th></tr><tr><td>2 ** 3</td></tr></table>"
