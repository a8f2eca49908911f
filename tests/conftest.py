"""Shared fixtures. Real servers live in tests/servers/, one plugin module each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from config.settings import Settings
from portaria.wiring import Service, open_service

# CI runs the same examples every time, so a red run can be reproduced; a
# developer's run explores new ones.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")

pytest_plugins = ["tests.servers.dovecot", "tests.servers.postgres", "tests.servers.smtp"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded defaults in a temp dir: SQLite, Maildir in and out."""
    return Settings(
        database={"url": f"sqlite:///{tmp_path}/portaria.db"},
        mailbox={"kind": "maildir", "maildir": tmp_path / "mail" / "inbox"},
        outbound={
            "kind": "maildir",
            "maildir": tmp_path / "mail" / "outbox",
            "from_address": "acesso@portaria.test",
        },
        service={"support_address": "suporte@portaria.test", "base_url": "https://portaria.test"},
        config_dir=tmp_path,
    )


@pytest.fixture
def service(settings: Settings) -> Service:
    """A migrated database behind the settings."""
    return open_service(settings, migrate=True)
