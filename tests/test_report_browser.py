"""The generated leaderboard in a real headless Chromium (Playwright): rows match the summary table,
sorting and filters work, run details open from their links, and nothing is fetched from the network."""

from __future__ import annotations

import os
import shutil

import pytest

from bench.report import build_report

CHROMIUM = os.environ.get("HRF_BENCH_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-quic", "--no-first-run"]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)),
                                reason=f"no Chromium executable at {CHROMIUM} (apt-get install chromium, "
                                       f"or set HRF_BENCH_CHROMIUM)")


@pytest.fixture(scope="module")
def page_and_summary(tiny_grid_results, tmp_path_factory):
    reports = tmp_path_factory.mktemp("browser-reports")
    report = build_report(tiny_grid_results, reports, light_preset="tiny", large_preset="lightweight")
    requests = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.on("request", lambda request: requests.append(request.url))
        page.goto(report.index.resolve().as_uri())
        yield page, report.summary, requests, reports
        browser.close()


def visible_rows(page) -> list[dict]:
    """The displayed leaderboard rows, in order: their data-* keys and data-value per column key."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('table.leaderboard tbody tr'))
        .filter(row => !row.hidden)
        .map(row => {
            const keys = Array.from(row.closest('table').querySelectorAll('thead th')).map(th => th.dataset.key);
            const values = {};
            keys.forEach((key, i) => { values[key] = row.cells[i].getAttribute('data-value'); });
            return {method: row.dataset.method, preset: row.dataset.preset, backbone: row.dataset.backbone,
                    config: row.dataset.config, dataset: row.dataset.dataset, values: values};
        })""")


def numbers(rows: list[dict], key: str) -> list[float | None]:
    return [None if r["values"][key] is None else float(r["values"][key]) for r in rows]


def test_leaderboard_rows_match_the_summary_table(page_and_summary):
    page, summary, _, _ = page_and_summary
    rows = visible_rows(page)
    shown = [(r["dataset"], r["method"], r["config"], r["backbone"], r["preset"]) for r in rows]
    expected = list(zip(summary["dataset"], summary["method"], summary["config"], summary["backbone"], summary["preset"]))
    assert shown == expected  # same rows, same (best first) order
    assert numbers(rows, "headline") == pytest.approx(summary["headline_mean"].tolist())
    assert numbers(rows, "params") == pytest.approx(summary["params"].tolist())
    first_header = page.locator("table.leaderboard thead th").nth(3)
    assert first_header.get_attribute("data-key") == "headline" and first_header.inner_text().startswith("UA %")


def test_clicking_a_header_sorts_by_that_column(page_and_summary):
    page, summary, _, _ = page_and_summary
    header = page.locator("table.leaderboard thead th[data-key='macs']").first
    header.click()
    ascending = numbers(visible_rows(page), "macs")
    assert ascending == sorted(ascending) and header.get_attribute("aria-sort") == "ascending"
    assert len(set(ascending)) > 1  # the order really is decided by this column
    header.click()
    assert numbers(visible_rows(page), "macs") == sorted(ascending, reverse=True)
    page.locator("table.leaderboard thead th[data-key='method']").first.click()
    methods = [r["method"] for r in visible_rows(page)]
    assert methods == sorted(methods)


def test_filters_hide_the_other_rows(page_and_summary):
    page, summary, _, _ = page_and_summary
    page.select_option("#filter-preset", "tiny")
    rows = visible_rows(page)
    assert {r["preset"] for r in rows} == {"tiny"} and len(rows) == (summary["preset"] == "tiny").sum()
    assert page.locator("#board-toy-count").inner_text() == f"{len(rows)} of {len(summary)} rows shown"
    method = "hrf" if "hrf" in set(summary["method"]) else "baseline"
    page.select_option("#filter-method", method)
    both = visible_rows(page)
    assert [(r["method"], r["preset"]) for r in both] == [(method, "tiny")]
    page.select_option("#filter-preset", "")
    page.select_option("#filter-method", "")
    assert len(visible_rows(page)) == len(summary)


def test_run_links_open_the_run_details(page_and_summary):
    page, summary, _, _ = page_and_summary
    run_id = summary["run_ids"].iloc[0].split()[0]
    details = page.locator(f"#run-{run_id}")
    assert details.get_attribute("open") is None
    page.locator(f"a[href='#run-{run_id}']").first.click()
    assert details.get_attribute("open") is not None
    assert details.locator("table.confusion tbody tr").count() == 4  # toy has 4 classes
    assert "train_epochs" in details.inner_text()


def test_screenshot_and_no_request_leaves_the_machine(page_and_summary, tmp_path_factory):
    page, _, requests, reports = page_and_summary
    page.evaluate("() => { document.querySelectorAll('.table-wrap').forEach(w => { w.scrollLeft = 0; }); "
                  "window.scrollTo(0, 0); }")
    shot = tmp_path_factory.getbasetemp() / "leaderboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    images = page.evaluate("() => Array.from(document.images).map(img => [img.naturalWidth, img.src.slice(0, 30)])")
    assert images and all(width > 0 and src.startswith("data:image/svg+xml;base64,") for width, src in images)
    assert requests and all(url.startswith(("file://", "data:")) for url in requests), requests
    print(f"screenshot: {shot}")
