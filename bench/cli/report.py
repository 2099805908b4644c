"""``bench report``: tables, figures, the HTML leaderboard and the results page from a results folder."""

from __future__ import annotations

from pathlib import Path

import click

from bench.paths import UserPath
from bench.reporting.formats import to_terminal
from bench.reporting.html import build_report


@click.command("report")
@click.option("--results-dir", type=UserPath(), default=Path("results"), show_default=True)
@click.option("--reports-dir", type=UserPath(), default=Path("reports"), show_default=True)
@click.option("--light-preset", default="lightweight", show_default=True,
              help="preset of the baseline that every method is compared to")
@click.option("--large-preset", default="large", show_default=True, help="preset of the large baseline")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the bootstrap intervals")
@click.option("--quiet", "-q", is_flag=True, help="print nothing but record problems (on stderr)")
def report_command(results_dir: Path, reports_dir: Path, light_preset: str, large_preset: str, seed: int,
                   quiet: bool) -> None:
    """Tidy tables, statistics, plots and the HTML leaderboard from the run records."""
    report = build_report(results_dir, reports_dir, light_preset, large_preset, seed)
    for problem in report.problems:
        click.echo(f"warning: {problem}", err=True)
    if quiet:
        return
    for note in report.notes:
        click.echo(f"note: {note}")
    if len(report.summary):
        click.echo(to_terminal(report.summary))
    click.echo(f"tables: {report.tables['summary.csv'].parent}  page: {report.index}")
