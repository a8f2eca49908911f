"""Shared fixtures. Real servers live in tests/servers/, one plugin module each."""

pytest_plugins = ["tests.servers.dovecot", "tests.servers.smtp"]
