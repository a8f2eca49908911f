"""A private PostgreSQL cluster for tests: initdb in a temp dir, one port on 127.0.0.1.

initdb refuses to run as root, so as root the cluster is made and run by the
``postgres`` system user. Skips (saying why) only outside CI when PostgreSQL
is not installed; in CI a missing server fails the run.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The base URL (no database name) of a running private PostgreSQL server."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed; .ci/run must install postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")

    root = Path(tempfile.mkdtemp(prefix="portaria-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    subprocess.run(
        _as_owner([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    settings = (
        f"listen_addresses='127.0.0.1'\nport={port}\nunix_socket_directories='{root}'\n"
        "fsync=off\nsynchronous_commit=off\nfull_page_writes=off\nmax_connections=50\n"
    )
    with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write(settings)
    server = subprocess.Popen(
        _as_owner([str(bin_dir / "postgres"), "-D", str(data)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(port, server)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for(port: int, server: subprocess.Popen[bytes]) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        if server.poll() is not None:
            pytest.fail(f"PostgreSQL exited with {server.returncode} at start")
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres").close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail("PostgreSQL did not accept connections within 30 s")
            time.sleep(0.05)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the private server, one per test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    base = postgres_server.removeprefix("postgresql+psycopg://postgres@")
    host, port = base.split(":")
    with psycopg.connect(
        f"host={host} port={port} user=postgres dbname=postgres", autocommit=True
    ) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"
