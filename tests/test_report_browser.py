"""The generated leaderboard in a real headless Chromium (Playwright): rows match the summary table,
sorting and filters work, run details and learning curves open from their links, failed runs are
listed, and nothing is fetched from the network. The page is built from the tiny grid's real records
with the fields other parts of the benchmark add written in (``test_report.augment_records``)."""

from __future__ import annotations

import math
import os
import shutil

import pytest
from test_report import augment_records

from bench.reporting.html import build_report

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
    results = tmp_path_factory.mktemp("browser-results") / "results"
    augment_records(tiny_grid_results, results)
    report = build_report(results, reports, light_preset="tiny", large_preset="lightweight")
    requests = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})  # the laptop screen the page is laid out for
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


def opened(details) -> None:
    """Wait (up to 5 s) for a <details> to open: the page opens it on the hashchange event, after the click."""
    sync_api.expect(details).to_have_js_property("open", True, timeout=5000)


def numbers(rows: list[dict], key: str) -> list[float | None]:
    return [None if r["values"][key] is None else float(r["values"][key]) for r in rows]


def present(values) -> list[float | None]:
    """Summary figures as the page gives them: None where missing."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def sorted_with_missing_last(values: list[float | None], reverse: bool = False) -> list[float | None]:
    known = sorted((v for v in values if v is not None), reverse=reverse)
    return known + [None] * (len(values) - len(known))


def test_leaderboard_rows_match_the_summary_table(page_and_summary):
    page, summary, _, _ = page_and_summary
    rows = visible_rows(page)
    shown = [(r["dataset"], r["method"], r["config"], r["backbone"], r["preset"]) for r in rows]
    expected = list(zip(summary["dataset"], summary["method"], summary["config"], summary["backbone"], summary["preset"]))
    assert shown == expected  # same rows, same (best first) order
    assert numbers(rows, "headline") == pytest.approx(present(summary["headline_mean"].tolist()))
    assert numbers(rows, "params") == pytest.approx(present(summary["params"].tolist()))
    first_header = page.locator("table.leaderboard thead th").nth(3)
    assert first_header.get_attribute("data-key") == "headline" and first_header.inner_text().startswith("UA %")


def test_clicking_a_header_sorts_by_that_column(page_and_summary):
    page, summary, _, _ = page_and_summary
    for key in ("macs", "latency_ratio"):
        header = page.locator(f"table.leaderboard thead th[data-key='{key}']").first
        header.click()
        ascending = numbers(visible_rows(page), key)
        assert ascending == sorted_with_missing_last(ascending) and header.get_attribute("aria-sort") == "ascending"
        assert len(set(ascending) - {None}) > 1  # the order really is decided by this column
        header.click()
        assert numbers(visible_rows(page), key) == sorted_with_missing_last(ascending, reverse=True)
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
    opened(details)
    assert details.locator("table.confusion tbody tr").count() == 4  # toy has 4 classes
    assert "train_epochs" in details.inner_text()


def test_failed_runs_are_listed_and_open_their_details(page_and_summary):
    page, _, _, _ = page_and_summary
    rows = page.locator("#failed-toy tbody tr")
    assert rows.count() == 3 and page.locator("#failed-toy").is_visible()
    texts = rows.all_inner_texts()
    assert sum("lowrank" in t and "budget unreachable" in t for t in texts) == 2
    assert sum("kd" in t and "teacher could not be trained" in t for t in texts) == 1
    link = rows.first.locator("a")
    run_id = link.inner_text()
    link.click()
    details = page.locator(f"#run-{run_id}")
    opened(details)
    assert details.locator("summary").inner_text().startswith("FAILED")


def test_large_model_warning_is_shown_in_the_row_and_above_the_board(page_and_summary):
    page, summary, _, _ = page_and_summary
    assert "warning" in summary
    box = page.locator("#warnings-toy")
    assert box.is_visible() and "kd @tiny" in box.inner_text()
    cell = page.locator("table.leaderboard tbody tr[data-method='kd'] td").first
    warning = cell.locator(".warn")
    assert warning.is_visible() and warning.inner_text().startswith("⚠ ")
    assert warning.evaluate("e => getComputedStyle(e).color") == "rgb(213, 94, 0)"  # the page's alarm colour


FIRST_VIEW = ("method", "backbone", "preset", "headline", "light", "large", "params", "macs", "latency_ratio", "train_x")


def header_boxes(page) -> dict:
    """Each shown header of the first leaderboard: its key and its box on the screen (null when hidden)."""
    return page.evaluate("""() => Object.fromEntries(Array.from(document.querySelectorAll(
        'table.leaderboard')[0].querySelectorAll('thead th')).map(th => {
            const box = th.getBoundingClientRect();
            return [th.dataset.key, box.width ? {left: box.left, right: box.right} : null]; }))""")


def test_first_view_shows_the_trade_off_and_the_toggle_unfolds_the_rest(page_and_summary):
    page, _, _, _ = page_and_summary
    page.evaluate("() => window.scrollTo(0, 0)")
    boxes = header_boxes(page)
    for key in FIRST_VIEW:  # accuracy, its paired difference and every cost on a 1400 px screen, no scrolling
        assert boxes[key] is not None and boxes[key]["right"] <= 1400, (key, boxes[key])
    folded = [key for key in ("p", "wa", "macro_f1", "latency_ms", "latency_min_ms", "runs") if key in boxes]
    assert folded and all(boxes[key] is None for key in folded)
    toggle = page.locator("label.more-toggle").first
    toggle.click()
    try:
        unfolded = header_boxes(page)
        assert all(unfolded[key] is not None for key in folded)
    finally:
        toggle.click()
    assert all(header_boxes(page)[key] is None for key in folded)


def test_phone_width_scrolls_the_table_not_the_page(page_and_summary, tmp_path_factory):
    page, _, _, reports = page_and_summary
    phone = page.context.browser.new_page(viewport={"width": 390, "height": 844})
    try:
        phone.goto((reports / "index.html").resolve().as_uri())
        assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390
        wrap = phone.locator(".table-wrap").first
        assert wrap.evaluate("w => w.scrollWidth > w.clientWidth")  # the board scrolls inside its frame
        shot = tmp_path_factory.getbasetemp() / "leaderboard-phone.png"
        phone.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
    finally:
        phone.close()


def test_curves_link_shows_the_learning_curves(page_and_summary):
    page, _, _, _ = page_and_summary
    row = page.locator("table.leaderboard tbody tr[data-method='kd']").first
    row.locator("a", has_text="curves").click()
    assert page.evaluate("() => window.location.hash") == "#plot-curves-toy-convtransformer"
    figure = page.locator("#plot-curves-toy-convtransformer img")
    assert figure.is_visible() and figure.evaluate("img => img.naturalWidth") > 0
    top = page.evaluate("() => document.getElementById('plot-curves-toy-convtransformer').getBoundingClientRect().top")
    assert abs(top) < 5  # scrolled to it


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
