"""The examples run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_two_tenants_example_shows_a_quota_error_reaching_the_plugin(built: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "two_tenants.py")], capture_output=True, text=True, check=True
    )
    assert "free: blog     -> refused: status -4 (QUOTA_EXCEEDED)" in result.stdout
    assert "paid: blog     -> 1" in result.stdout
    assert "free: usage 3 keys" in result.stdout
