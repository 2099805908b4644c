"""In CI (``CI=true``) a test skipped for want of EmoDB, Chromium or PostgreSQL fails instead
(tests/conftest.py): a skip there would hide a broken install step. Elsewhere it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = '''
import pytest
pytestmark = pytest.mark.skipif(True, reason="no PostgreSQL server at x")
def test_needs_postgres(): pass
'''
UNRELATED = '''
import pytest
def test_other_platform(): pytest.skip("not on this platform")
def test_emodb_at_call_time(): pytest.skip("real EmoDB not found at /nowhere")
'''
MODULE = '''
import pytest
pytest.importorskip("no_such_module_here", reason="Playwright for Python is not installed")
def test_browser(): pass
'''


# a skip in setup (skipif, a fixture) then reads as an error, one at collection as a collection error
@pytest.mark.parametrize("ci, expected", [("true", "1 failed, 1 skipped, 2 errors"), ("", "4 skipped")])
def test_skips_for_what_ci_installs_fail_in_ci_only(tmp_path, ci, expected):
    for name, text in (("test_a.py", TESTS), ("test_b.py", UNRELATED), ("test_c.py", MODULE)):
        (tmp_path / name).write_text(text)
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "--rootdir", str(tmp_path),
                             "-p", "no:cacheprovider", "--continue-on-collection-errors", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, CI=ci, PYTHONPATH=path), timeout=120)
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(expected + " in "), result.stdout
