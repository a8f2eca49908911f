"""A real, private Dovecot IMAP server for tests, and a fresh mail account per test.

This plugin owns the ``dovecot_server`` fixture (one ``dovecot -F`` child per
test session, listening on 127.0.0.1 with plain, STARTTLS and IMAPS, a
self-signed certificate the client can verify, and its own passwd-file) and
the ``imap_account`` fixture (a new user with an empty mailbox for each test,
with ways to load mail into it and look at it from outside the code under test).
``dovecot_oauth2_server`` is a second such Dovecot that also takes XOAUTH2
logins, checked against a token issuer the fixture runs on 127.0.0.1.

Nothing here reads /etc/dovecot or needs systemd. The configuration uses
Dovecot 2.3 syntax (Debian 12, Ubuntu 22.04 and 24.04).
"""

from __future__ import annotations

import grp
import itertools
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from config.settings import MailboxSettings

DOVECOT_PLACES = ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot")
START_DEADLINE = 10.0  # seconds; Dovecot is usually listening within 50 ms
STOP_DEADLINE = 10.0
APPEND_BATCH = 500  # messages per MULTIAPPEND: one APPEND each is 25 times slower
READ_BATCH = 1000

CONFIG = """\
# Written by tests/servers/dovecot.py for one test session.
protocols = imap
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
listen = 127.0.0.1
{run_as}

# One passwd-file per user: Dovecot re-reads a changed file at most once a
# second, but opens a file it has not seen yet at once.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users/%u
}}
userdb {{
  driver = passwd-file
  args = {root}/users/%u
}}
first_valid_uid = {first_valid_uid}
# A wrong-password test would otherwise wait two seconds, and every later
# login from 127.0.0.1 up to fifteen.
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
# Only ever on loopback: the plain-port tests log in without TLS.
disable_plaintext_auth = no
auth_mechanisms = plain login

mail_location = maildir:~/Maildir
mail_fsync = never
# Long UID lists in one command.
imap_max_line_length = 2M
namespace inbox {{
  inbox = yes
  separator = /
}}

ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
ssl_dh = </usr/share/dovecot/dh.pem

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {ssl_port}
    ssl = yes
  }}
{login_chroot}
}}
"""

# Without root Dovecot cannot switch users or chroot: everything runs as us.
RUN_AS_SELF = """\
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
"""
NO_CHROOT = """\
  chroot =
"""


@dataclass
class DovecotServer:
    """One private Dovecot: where it lives, its ports, and how to stop and start it."""

    binary: str
    root: Path
    port: int  # plain IMAP and STARTTLS
    ssl_port: int  # IMAPS
    uid: int
    gid: int
    process: subprocess.Popen[bytes] | None = None
    _serial: Iterator[int] = field(default_factory=itertools.count)

    host = "127.0.0.1"

    @property
    def cert_file(self) -> Path:
        return self.root / "cert.pem"

    @property
    def log_file(self) -> Path:
        return self.root / "dovecot.log"

    @classmethod
    def prepare(cls, binary: str, root: Path) -> DovecotServer:
        """Write the configuration, the certificate and the (empty) users folder under ``root``."""
        as_root = os.geteuid() == 0
        if as_root:
            uid = gid = _unused_id()
        else:
            uid, gid = os.getuid(), os.getgid()
        server = cls(binary, root, _free_port(), _free_port(), uid, gid)

        # Dovecot's own users (dovenull, dovecot) must be able to reach the
        # users file and the mail homes.
        root.chmod(0o711)
        (root / "homes").mkdir()
        os.chown(root / "homes", uid, gid)
        (root / "users").mkdir(mode=0o755)
        _make_certificate(root / "cert.pem", root / "key.pem")

        if as_root:
            run_as, login_chroot = "", ""
        else:
            user = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
            run_as, login_chroot = RUN_AS_SELF.format(user=user, group=group), NO_CHROOT
        (root / "dovecot.conf").write_text(
            CONFIG.format(
                root=root,
                port=server.port,
                ssl_port=server.ssl_port,
                first_valid_uid=min(uid, 1000),
                run_as=run_as,
                login_chroot=login_chroot,
            )
        )
        return server

    def start(self) -> None:
        """Run Dovecot in the foreground as our child; return once both ports answer."""
        if self.process is not None and self.process.poll() is None:
            return
        with (self.root / "stderr.log").open("ab") as stderr:
            # A session of its own, so stop() can signal Dovecot's children too.
            self.process = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.root / "dovecot.conf")],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_DEADLINE
        for port in (self.port, self.ssl_port):
            while not _accepts(self.host, port):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"dovecot exited with {self.process.returncode}\n{self.logs()}"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"dovecot is not listening on {port}\n{self.logs()}")
                time.sleep(0.005)

    def stop(self) -> None:
        """SIGTERM to Dovecot and its children; return once every one of them is gone.

        Signalling only the master takes a second: it waits for its children
        to notice. Signalling the whole group takes milliseconds, and waiting
        for the group means the ports are free for start() again.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        group = process.pid  # start_new_session made the master the group leader
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE
        try:
            process.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            _signal_group(group, signal.SIGKILL)
            process.wait()
        while _signal_group(group, 0):
            if time.monotonic() > deadline:
                _signal_group(group, signal.SIGKILL)
                break
            time.sleep(0.005)

    def logs(self) -> str:
        """The end of Dovecot's own log and of its standard error, for failure messages."""
        parts = []
        for path in (self.root / "stderr.log", self.log_file):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-30:]
                parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def new_account(self) -> ImapAccount:
        """A user nobody has used yet, so its mailbox starts empty."""
        username = f"user{next(self._serial)}"
        password = secrets.token_urlsafe(12)
        home = self.root / "homes" / username
        home.mkdir()
        os.chown(home, self.uid, self.gid)
        entry = f"{username}:{password}:{self.uid}:{self.gid}::{home}\n"
        (self.root / "users" / username).write_text(entry)
        return ImapAccount(self, username, password)


@dataclass
class ImapAccount:
    """A mail user on the test server, seen from outside the code under test."""

    server: DovecotServer
    username: str
    password: str

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def ssl_port(self) -> int:
        return self.server.ssl_port

    @property
    def cert_file(self) -> Path:
        return self.server.cert_file

    def connect(self) -> IMAPClient:
        """A separate, logged-in connection over the plain port."""
        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        client.login(self.username, self.password)
        return client

    def mailbox_settings(self, **overrides: Any) -> MailboxSettings:
        """Settings for an IMAP source on this account: plain port unless overridden.

        ``security="ssl"`` without a port picks the IMAPS port; the certificate
        is given as ``ca_file`` unless overridden.
        """
        values: dict[str, Any] = {
            "kind": "imap",
            "host": self.host,
            "port": self.ssl_port if overrides.get("security") == "ssl" else self.port,
            "security": "plain",
            "username": self.username,
            "password": self.password,
            "ca_file": self.cert_file,
            "timeout": 10.0,
        }
        values.update(overrides)
        return MailboxSettings(**values)

    def append(
        self,
        raw: bytes | Sequence[bytes],
        folder: str = "INBOX",
        flags: Sequence[str] = (),
    ) -> None:
        """Deliver messages with MULTIAPPEND, creating the folder when missing."""
        messages: list[Any] = [raw] if isinstance(raw, bytes) else list(raw)
        if flags:
            messages = [{"msg": message, "flags": list(flags)} for message in messages]
        with self.connect() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for start in range(0, len(messages), APPEND_BATCH):
                client.multiappend(folder, messages[start : start + APPEND_BATCH])

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        """Every message in the folder, in UID order, read without setting \\Seen."""
        return [item[b"BODY[]"] for item in self._read(folder, "BODY.PEEK[]")]

    def flags(self, folder: str = "INBOX") -> list[set[str]]:
        """Each message's flags in UID order, without the per-session \\Recent."""
        return [
            {flag.decode() for flag in item[b"FLAGS"] if flag != b"\\Recent"}
            for item in self._read(folder, "FLAGS")
        ]

    def folders(self) -> list[str]:
        with self.connect() as client:
            return sorted(name for _flags, _separator, name in client.list_folders())

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.connect() as client:
            return int(client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])

    def _read(self, folder: str, item: str) -> list[dict[bytes, Any]]:
        with self.connect() as client:
            client.select_folder(folder, readonly=True)
            uids = sorted(client.search("ALL"))
            found: list[dict[bytes, Any]] = []
            for start in range(0, len(uids), READ_BATCH):
                batch = uids[start : start + READ_BATCH]
                response = client.fetch(batch, [item])
                found.extend(response[uid] for uid in batch)
            return found


def _ci_requires_real_servers() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _dovecot_binary() -> str | None:
    found = shutil.which("dovecot")
    if found:
        return found
    return next((place for place in DOVECOT_PLACES if os.access(place, os.X_OK)), None)


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[DovecotServer]:
    """A running private Dovecot for the whole session; ``stop()``/``start()`` restart it."""
    binary = _dovecot_binary()
    if binary is None:
        reason = "dovecot is not installed (apt-get install dovecot-imapd)"
        if _ci_requires_real_servers():
            # A green CI run that skipped the real-server tests proves nothing.
            pytest.fail(f"CI is set but {reason}; the IMAP tests cannot run", pytrace=False)
        pytest.skip(f"{reason}: real IMAP server tests skipped")

    root = Path(tempfile.mkdtemp(prefix="portaria-dovecot-"))
    try:
        server = DovecotServer.prepare(binary, root)
        server.start()
        yield server
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def imap_account(dovecot_server: DovecotServer) -> ImapAccount:
    """A fresh user with an empty INBOX on the session's Dovecot."""
    dovecot_server.start()  # in case a test stopped it and did not start it again
    return dovecot_server.new_account()


# The OAuth2 variant: a second private Dovecot whose oauth2 passdb accepts
# XOAUTH2 and OAUTHBEARER logins by asking a token-introspection endpoint,
# which the fixture serves on 127.0.0.1 (introspection_mode = auth: Dovecot
# sends the client's token as "Authorization: Bearer ..." and reads the user
# name from the JSON answer). Password logins keep working through the
# passwd-file passdb, so accounts are loaded the usual way. Appended to the
# usual configuration: later settings win, passdbs add up.
OAUTH2_CONFIG = """\

auth_mechanisms = plain login xoauth2 oauthbearer
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/dovecot-oauth2.conf.ext
}}
"""
OAUTH2_BACKEND = """\
introspection_mode = auth
introspection_url = http://127.0.0.1:{port}/userinfo
username_attribute = username
active_attribute = active
active_value = true
"""


class TokenIssuer:
    """A tiny OAuth2 provider: issues bearer tokens and answers Dovecot's introspection.

    ``issue(username)`` gives a new token; ``revoke(token)`` plays expiry.
    A known token is answered with ``{"username": ..., "active": "true"}``, an
    unknown or revoked one with ``{"active": "false"}``, which Dovecot turns
    into an ordinary authentication failure. ``introspected`` lists every
    token Dovecot asked about, in order.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self.introspected: list[str] = []
        issuer = self

        class Introspection(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                answer = issuer._introspect(token)
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # requests carry tokens; keep them out of test output

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Introspection)
        self.port = int(self._http.server_address[1])
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def issue(self, username: str) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = username
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def _introspect(self, token: str) -> dict[str, str]:
        with self._lock:
            self.introspected.append(token)
            username = self._tokens.get(token)
        if username is None:
            return {"active": "false"}
        return {"username": username, "active": "true"}


@dataclass
class OAuth2Dovecot:
    """The OAuth2 variant of the private Dovecot and the provider whose tokens it accepts."""

    server: DovecotServer
    issuer: TokenIssuer

    def new_account(self) -> ImapAccount:
        return self.server.new_account()


@pytest.fixture(scope="session")
def dovecot_oauth2_server() -> Iterator[OAuth2Dovecot]:
    """A second private Dovecot that also accepts XOAUTH2 with tokens from a TokenIssuer."""
    binary = _dovecot_binary()
    if binary is None:
        reason = "dovecot is not installed (apt-get install dovecot-imapd)"
        if _ci_requires_real_servers():
            pytest.fail(f"CI is set but {reason}; the IMAP tests cannot run", pytrace=False)
        pytest.skip(f"{reason}: real IMAP server tests skipped")

    issuer = TokenIssuer()
    issuer.start()
    root = Path(tempfile.mkdtemp(prefix="portaria-dovecot-oauth2-"))
    try:
        server = DovecotServer.prepare(binary, root)
        (root / "dovecot-oauth2.conf.ext").write_text(OAUTH2_BACKEND.format(port=issuer.port))
        with (root / "dovecot.conf").open("a") as config:
            config.write(OAUTH2_CONFIG.format(root=root))
        server.start()
        yield OAuth2Dovecot(server, issuer)
        server.stop()
    finally:
        issuer.stop()
        shutil.rmtree(root, ignore_errors=True)


def _signal_group(group: int, signal_number: int) -> bool:
    """Send a signal to a process group; False when no process in it is left."""
    try:
        os.killpg(group, signal_number)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _unused_id() -> int:
    """A number no user or group in /etc/passwd or /etc/group has, so no one else owns the mail."""
    candidate = 5000
    while _id_taken(candidate):
        candidate += 1
    return candidate


def _id_taken(number: int) -> bool:
    try:
        pwd.getpwuid(number)
    except KeyError:
        try:
            grp.getgrgid(number)
        except KeyError:
            return False
    return True


def _make_certificate(cert: Path, key: Path) -> None:
    # An EC key: generating one takes milliseconds, an RSA key up to a second.
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
