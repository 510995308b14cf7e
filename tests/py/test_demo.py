"""The README's demo command works: scripts/demo starts a backend and the proxy and shows two tenants isolated."""

from __future__ import annotations

import os
import subprocess

from conftest import REPO


def test_demo_runs_and_shows_two_tenants_isolated():
    env = dict(os.environ, TW_DEMO_LISTEN="127.0.0.1:0")
    run = subprocess.run([str(REPO / "scripts" / "demo")], capture_output=True, text=True, timeout=600, env=env,
                         stdin=subprocess.DEVNULL)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "acme    find -> ['A-1', 'A-2', 'A-3']" in out
    assert "globex  find -> ['G-1', 'G-2']" in out
    assert "refused: code 13 (Unauthorized)" in out
    assert "ok: two tenants shared one collection" in out
