"""The shared #ACESSO examples, scored by the shared checker through `portaria parse --json`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
CHECKER = SHARED / "tools" / "check_parse.py"
EXAMPLES = SHARED / "examples" / "acesso"


@pytest.mark.skipif(not CHECKER.exists(), reason=f"no shared examples at {SHARED}")
def test_shared_examples_score_every_case() -> None:
    command = shutil.which("portaria", path=str(Path(sys.executable).parent))
    assert command, "the portaria command is not installed next to this Python"

    result = subprocess.run(
        [sys.executable, str(CHECKER), str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PARSE_CMD": f"{command} parse --json {{file}}"},
    )

    cases = len(list(EXAMPLES.glob("*.eml")))
    assert result.stdout.strip().splitlines()[-1] == f"parse: {cases}/{cases} cases right", (
        result.stdout + result.stderr
    )
