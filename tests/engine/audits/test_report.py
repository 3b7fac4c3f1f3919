"""The HTML audit report: sections, embedded plots, no external resources, escaping, failing cells."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.audits.report import render_report
from engine.audits.summary import Task, summarize

HOSTILE = "<script>alert(1)</script>"
FEATURES = ["income", HOSTILE, "colour", "$x$"]
SECTIONS = ["summary", "global-importance", "beeswarm", "dependence", "fairness", "provenance", "top-rows"]
PROVENANCE = {
    "model": {"name": "credit", "version": 3, "sha256": "ab" * 32, "variant": "fp32"},
    "method": "kernel_shap",
    "parameters": {"nsamples": 2048, "seed": 7, "background": {"rows": 100, "sha256": "cd" * 32}},
    "provenance": {"onnxplain": "0.1.0", "shap": "0.51.0", "onnxruntime": "1.23.0"},
}


def report_table(n: int = 400, seed: int = 0, biased: bool = True) -> pd.DataFrame:
    """Per-row table with a numeric, a hostile-named, a categorical and a "$"-named feature.

    With ``biased``, group A of ``sex`` is approved far more often than group B; without, rows come in A/B
    pairs sharing label and prediction, so every parity metric is exactly balanced.
    """
    rng = np.random.default_rng(seed)
    label = np.where(rng.random(n) < 0.5, "yes", "no")
    if biased:
        sex = rng.choice(["A", "B"], n)
        prediction = np.where(rng.random(n) < np.where(sex == "A", 0.75, 0.25), "yes", "no")
    else:
        pair = np.arange(n) // 2
        sex, label = np.where(np.arange(n) % 2 == 0, "A", "B"), label[pair]
        prediction = np.where(rng.random(n) < 0.5, "yes", "no")[pair]
    values: dict[str, Any] = {
        "income": rng.normal(5, 1.5, n),
        HOSTILE: rng.uniform(0, 1, n),
        "colour": rng.choice(["red", "green", "blue"], n),
        "$x$": rng.exponential(1.0, n),
    }
    table: dict[str, Any] = {"row": np.arange(n), "prediction": prediction, "target": "yes", "base_value": 0.5}
    table |= {"label": label, "sensitive.sex": sex}
    for i, f in enumerate(FEATURES):
        table[f"value.{f}"] = values[f]
        numeric = pd.factorize(values[f])[0] if f == "colour" else values[f]
        table[f"attr.{f}"] = (i + 1) * 0.1 * (numeric - np.mean(numeric))
    table["score"] = 0.5 + sum(table[f"attr.{f}"] for f in FEATURES)
    return pd.DataFrame(table)


class _Collector(HTMLParser):
    """Collects ids, tags, and every URL-bearing attribute of the document."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for key, value in attrs:
            if key == "id" and value:
                self.ids.append(value)
            if key in ("src", "href", "srcset", "action", "data", "poster") and value is not None:
                self.urls.append((tag, key, value))
            if tag == "img" and key == "src" and value:
                self.images.append(value)


def _render(rows: pd.DataFrame, task: Task = "classification", **kwargs: Any) -> tuple[str, _Collector]:
    positive = "yes" if task == "classification" else None
    summary = summarize(rows, features=FEATURES, task=task, positive=positive, sensitive=["sex"])
    html = render_report(summary, rows, features=FEATURES, provenance=PROVENANCE, title="Credit <audit>", **kwargs)
    parsed = _Collector()
    parsed.feed(html)
    return html, parsed


@pytest.fixture(scope="module")
def rendered() -> tuple[str, _Collector]:
    return _render(report_table())


def test_every_section_is_present(rendered: tuple[str, _Collector]) -> None:
    """Each section has its stable id, exactly once."""
    _, parsed = rendered
    for section in SECTIONS:
        assert parsed.ids.count(section) == 1, section


def test_plots_are_embedded_png_data_uris(rendered: tuple[str, _Collector]) -> None:
    """Importance, beeswarm and three dependence plots, each a decodable PNG in a data URI."""
    _, parsed = rendered
    assert len(parsed.images) == 1 + 1 + 3
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(b"\x89PNG\r\n\x1a\n")


def test_no_external_resources(rendered: tuple[str, _Collector]) -> None:
    """No script, no stylesheet link, and every src/href is a data URI: the file works offline."""
    html, parsed = rendered
    assert "script" not in parsed.tags and "link" not in parsed.tags and "iframe" not in parsed.tags
    assert all(value.startswith("data:") for _, _, value in parsed.urls), parsed.urls
    assert not re.search(r"https?://", html)
    assert "@import" not in html and "url(" not in html


def test_failing_metrics_are_marked(rendered: tuple[str, _Collector]) -> None:
    """The biased column's failing parity cells carry class="fail"; a balanced audit has none."""
    html, _ = rendered
    fairness = html[html.index('id="fairness"') : html.index('id="provenance"')]
    assert fairness.count('class="fail"') >= 2  # demographic parity difference and ratio at least
    balanced, _ = _render(report_table(biased=False))
    assert 'class="fail"' not in balanced


def test_hostile_names_are_escaped(rendered: tuple[str, _Collector]) -> None:
    """A feature named like a script tag appears only escaped; the title is escaped too."""
    html, parsed = rendered
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "script" not in parsed.tags
    assert "<title>Credit &lt;audit&gt;</title>" in html


def test_summary_and_provenance_content(rendered: tuple[str, _Collector]) -> None:
    """Model name/version, method, the sha256 and library versions are in the report."""
    html, _ = rendered
    summary = html[html.index('id="summary"') : html.index('id="global-importance"')]
    assert "credit 3" in summary and "kernel_shap" in summary and "400" in summary
    assert "accuracy" in summary
    provenance = html[html.index('id="provenance"') : html.index('id="top-rows"')]
    for text in ("ab" * 32, "parameters.nsamples", "2048", "provenance.shap", "0.51.0"):
        assert text in provenance, text


def test_top_rows_are_the_largest_total_attributions() -> None:
    """#top-rows lists top_rows rows, the first being the row with the largest total |attribution|."""
    rows = report_table()
    html, _ = _render(rows, top_rows=3)
    section = html[html.index('id="top-rows"') :]
    totals = rows[[f"attr.{f}" for f in FEATURES]].abs().sum(axis=1)
    first = int(rows["row"].to_numpy()[np.argmax(totals.to_numpy())])
    numbers = re.findall(r'<tr><td class="num">(\d+)</td>', section)
    assert len(numbers) == 3 and int(numbers[0]) == first


def test_regression_report_and_no_pyplot_figures_left() -> None:
    """A regression audit renders too; no pyplot figure is ever opened (so none can leak)."""
    import matplotlib.pyplot as plt

    rows = report_table().assign(prediction=lambda t: t["score"], label=lambda t: t["score"] + 0.1)
    before = plt.get_fignums()
    html, parsed = _render(rows, task="regression")
    assert plt.get_fignums() == before
    assert all(parsed.ids.count(s) == 1 for s in SECTIONS)
    assert "Mean prediction" in html and 'class="fail"' not in html


def test_large_tables_are_sampled_for_plots() -> None:
    """Above the plot limit the beeswarm says it shows a sample, and the report still renders."""
    html, parsed = _render(report_table(n=6000))
    assert "a random sample of 5000 rows" in html and len(parsed.images) == 5


def test_repeated_index_and_missing_values_still_render() -> None:
    """Chunks concatenated without a fresh index, a missing attribution and a missing value do not break it."""
    rows = report_table(n=120)
    rows.index = np.zeros(len(rows), dtype=int)
    position = np.arange(len(rows))
    rows["attr.income"] = rows["attr.income"].where(position != 3)
    rows["value.colour"] = rows["value.colour"].where(position != 5)
    html, parsed = _render(rows)
    assert all(parsed.ids.count(s) == 1 for s in SECTIONS) and len(parsed.images) == 5
