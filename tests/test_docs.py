"""The README is a user's guide that points into docs/, and every page it points to exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_readme_is_a_short_guide_whose_links_into_docs_resolve():
    readme = ROOT.joinpath("README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert {"docs/cli.md", "docs/records.md", "docs/plugins.md", "docs/reports.md"} <= set(links)
    missing = [link for link in links if not ROOT.joinpath(link).is_file()]
    assert not missing, missing


def test_docs_pages_link_only_to_pages_that_exist():
    for page in ROOT.joinpath("docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+\.md)", page.read_text()):
            assert (page.parent / link).is_file(), f"{page.name} links to {link}"
