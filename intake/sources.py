"""Mailbox sources: the one way the intake reads request emails and files them away.

This module owns the :class:`MailboxSource` interface the poller talks to, its
two implementations (:class:`ImapMailbox` for a mailbox on an IMAP server and
:class:`MaildirMailbox` for the embedded default, a local Maildir), the choice
between them (:func:`open_source`) and the errors a mailbox raises.

A source never changes a message it reads: fetching leaves ``\\Seen`` alone,
and the only change it makes is moving messages out of the inbox folder once
the poller has committed what it decided about them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import quote

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from config.settings import MailboxSettings
from intake.policy import HEADER_BLOCK_BYTES
from portaria.errors import PortariaError
from portaria.oauth2 import AccessTokenUnavailable, read_access_token

log = logging.getLogger(__name__)

# UIDs per MOVE, COPY, STORE or EXPUNGE command: one command per message costs
# time that grows with the mailbox, while very long UID lists hit servers'
# command-line limits.
MOVE_BATCH = 500

# RFC 2177 asks clients to end IDLE within 29 minutes; the caller waits again.
IDLE_LIMIT = 25 * 60.0

# How often a Maildir is looked at while waiting for new mail.
MAILDIR_CHECK_INTERVAL = 0.25

# Maildir file names are "<unique>:2,<flags>"; the unique part is the key.
MAILDIR_INFO_SEPARATOR = ":"
_DIGITS = re.compile(r"(\d+)")

# What an act on a Maildir file returns (the bytes read, or nothing).
_Done = TypeVar("_Done")


class MailboxError(PortariaError):
    """The mailbox could not be read or changed; the message names the mailbox."""


class MailboxUnavailable(MailboxError):
    """The mail server cannot be reached, or the connection broke or timed out."""


class MailboxLoginRefused(MailboxError):
    """The mail server refused the configured login (password or OAuth2 token), or no
    access token could be read for it."""


class MailboxFolderMissing(MailboxError):
    """The inbox folder named in the settings does not exist on the server."""


@dataclass(frozen=True)
class Fetched:
    """One message as read from the inbox folder, byte for byte.

    ``size`` is the whole message's size. A message over the fetch's ``max_bytes``
    comes with only its start in ``raw`` (``HEADER_BLOCK_BYTES``, enough for the
    headers): the rest is never downloaded.
    """

    key: str
    raw: bytes
    size: int

    @property
    def whole(self) -> bool:
        return len(self.raw) == self.size


class MailboxSource(Protocol):
    """An inbox folder the poller reads, and the folders it files messages into.

    ``identity`` names the mailbox for the database: keys are unique and stable
    only within one identity. Use the source as a context manager; ``keys``,
    ``fetch``, ``move`` and ``wait`` work only inside it.

    - ``keys()``: the key of every message now in the inbox folder.
    - ``fetch(keys, max_bytes=None)``: the messages for those keys, in that
      order, read in batches and without marking them seen; keys no longer
      there are skipped. A message larger than ``max_bytes`` is read only as
      far as its headers (see :class:`Fetched`).
    - ``move(keys, folder)``: moves those messages out of the inbox folder into
      ``folder`` (created when missing). Keys that are gone, for instance
      because an earlier move finished just before a crash, are ignored.
    - ``wait(timeout)``: blocks until new mail may have arrived or ``timeout``
      seconds passed; True when the mailbox signalled a change.

    Every failure is a :class:`MailboxError`. After :class:`MailboxUnavailable`
    the connection is in an unknown state: leave the ``with`` block and open
    the mailbox again.
    """

    identity: str

    def __enter__(self) -> MailboxSource: ...

    def __exit__(self, *exc: object) -> None: ...

    def keys(self) -> list[str]: ...

    def fetch(self, keys: Sequence[str], max_bytes: int | None = None) -> Iterator[Fetched]: ...

    def move(self, keys: Sequence[str], folder: str) -> None: ...

    def wait(self, timeout: float) -> bool: ...


def open_source(settings: MailboxSettings, resolve: Callable[[Path], Path]) -> MailboxSource:
    """The mailbox the settings describe; ``resolve`` anchors relative paths."""
    if settings.kind == "maildir":
        return MaildirMailbox(resolve(settings.maildir))
    ca_file = resolve(settings.ca_file) if settings.ca_file is not None else None
    return ImapMailbox(settings, ca_file=ca_file, resolve=resolve)


class ImapMailbox:
    """A folder on an IMAP server, read through one connection. See :class:`MailboxSource`.

    Keys are ``"UIDVALIDITY:UID"``. When the server starts a new UIDVALIDITY
    every key changes, so every message looks new; the poller recognises the
    ones it already handled by Message-ID and content hash. Keys from another
    UIDVALIDITY cannot be addressed any more and are skipped.
    """

    def __init__(
        self,
        settings: MailboxSettings,
        *,
        ca_file: Path | None = None,
        resolve: Callable[[Path], Path] = Path,
    ) -> None:
        if settings.host is None or settings.username is None:
            raise ValueError("an IMAP mailbox needs settings.host and settings.username")
        self.settings = settings
        self.ca_file = ca_file
        # Anchors a relative mailbox.oauth2.token_file, which is read at every login.
        self._resolve = resolve
        self.host = settings.host
        self.port = settings.effective_port
        self.folder = settings.folder
        self.identity = imap_identity(settings)
        self.uidvalidity: int | None = None
        self._client: IMAPClient | None = None
        self._separator: str | None = None
        self._known_folders: set[str] = set()

    @property
    def _server(self) -> str:
        return f"IMAP server {self.host}:{self.port}"

    def __enter__(self) -> ImapMailbox:
        try:
            self._connect()
            self._login()
            self._select_inbox()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            # The connection is usually already broken when LOGOUT fails.
            try:
                client.shutdown()
            except Exception as exc:
                log.debug("%s: closing the connection failed: %s", self.identity, exc)
        log.debug("%s: disconnected", self.identity)

    def keys(self) -> list[str]:
        client = self._connected()
        with self._talking(f"listing the messages in {self.folder}"):
            # SEARCH answers from the session's view of the folder; NOOP makes
            # the server bring in mail delivered since the last command first.
            client.noop()
            uids = client.search("ALL")
        log.debug("%s: %d messages in the inbox folder", self.identity, len(uids))
        return [f"{self.uidvalidity}:{uid}" for uid in sorted(uids)]

    def fetch(self, keys: Sequence[str], max_bytes: int | None = None) -> Iterator[Fetched]:
        client = self._connected()
        uids = self._addressable_uids(keys, "fetch")
        size = self.settings.batch_size
        for start in range(0, len(uids), size):
            batch = uids[start : start + size]
            with self._talking(f"fetching {len(batch)} messages from {self.folder}"):
                sizes = {
                    uid: item[b"RFC822.SIZE"]
                    for uid, item in client.fetch(batch, ["RFC822.SIZE"]).items()
                    if b"RFC822.SIZE" in item
                }
                whole: list[int] = []
                oversize: list[int] = []
                for uid in batch:
                    if uid in sizes:
                        too_big = max_bytes is not None and sizes[uid] > max_bytes
                        (oversize if too_big else whole).append(uid)
                contents: dict[int, bytes | None] = {}
                if whole:
                    # BODY.PEEK[] rather than RFC822 or BODY[]: those set \Seen.
                    bodies = client.fetch(whole, ["BODY.PEEK[]"])
                    contents.update((uid, item.get(b"BODY[]")) for uid, item in bodies.items())
                if oversize:
                    starts = client.fetch(oversize, [f"BODY.PEEK[]<0.{HEADER_BLOCK_BYTES}>"])
                    contents.update((uid, item.get(b"BODY[]<0>")) for uid, item in starts.items())
            log.debug(
                "%s: fetched %d of %d messages (UIDs %s-%s), %d only in part for their size",
                self.identity,
                len(contents),
                len(batch),
                batch[0],
                batch[-1],
                len(oversize),
            )
            for uid in batch:
                raw = contents.get(uid)
                if raw is not None:  # None: expunged by someone else meanwhile
                    yield Fetched(f"{self.uidvalidity}:{uid}", raw, sizes[uid])

    def move(self, keys: Sequence[str], folder: str) -> None:
        client = self._connected()
        uids = self._addressable_uids(keys, "move")
        if not uids:
            return
        target = self._server_folder(folder)
        self._ensure_folder(target)
        can_move = client.has_capability("MOVE")
        moved = 0
        for start in range(0, len(uids), MOVE_BATCH):
            batch = uids[start : start + MOVE_BATCH]
            with self._talking(f"moving {len(batch)} messages from {self.folder} to {target}"):
                # Only the UIDs still here: a move repeated after a crash finds
                # them gone, and the count in the log stays true.
                present = sorted(client.search(["UID", _uid_set(batch)]))
                if not present:
                    continue
                if can_move:
                    client.move(present, target)
                else:
                    self._copy_and_expunge(client, present, target)
            moved += len(present)
        log.info(
            "%s: moved %d messages to %s (%d already gone)",
            self.identity,
            moved,
            target,
            len(uids) - moved,
        )

    def wait(self, timeout: float) -> bool:
        client = self._connected()
        if not (self.settings.idle and client.has_capability("IDLE")):
            time.sleep(timeout)
            return False
        deadline = time.monotonic() + min(timeout, IDLE_LIMIT)
        with self._talking(f"waiting for new mail in {self.folder}"):
            client.idle()
            try:
                while (remaining := deadline - time.monotonic()) > 0:
                    # Keep-alive lines ("OK Still here") are not new mail.
                    responses = client.idle_check(timeout=remaining)
                    if any(_announces_new_mail(response) for response in responses):
                        log.debug("%s: woken by the server", self.identity)
                        return True
            finally:
                client.idle_done()
        return False

    # Connection

    def _connect(self) -> None:
        security = self.settings.security
        if security == "plain" and not _is_loopback(self.host):
            log.warning(
                "%s: security = 'plain' sends the password and mail unencrypted",
                self.identity,
            )
        context = self._tls_context() if security != "plain" else None
        with self._talking("connecting"):
            self._client = IMAPClient(
                self.host,
                port=self.port,
                ssl=security == "ssl",
                ssl_context=context,
                timeout=self.settings.timeout,
            )
            if security == "starttls":
                if not self._client.has_capability("STARTTLS"):
                    raise MailboxUnavailable(
                        f"{self._server} does not offer STARTTLS; "
                        "set mailbox.security to 'ssl' (usually port 993)"
                    )
                self._client.starttls(context)
        log.debug("%s: connected (%s)", self.identity, security)

    def _tls_context(self) -> ssl.SSLContext:
        if self.ca_file is None:
            return ssl.create_default_context()
        try:
            return ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise MailboxError(
                f"{self._server}: cannot load mailbox.ca_file {self.ca_file}: {_reason(exc)}"
            ) from exc

    def _login(self) -> None:
        if self.settings.auth == "oauth2":
            self._login_oauth2()
            return
        client = self._connected()
        username = self.settings.username
        password = self.settings.password
        if password is None or not password.get_secret_value():
            raise MailboxLoginRefused(
                f"{self._server}: no password for {username!r}; "
                "set mailbox.password_file or PORTARIA_MAILBOX__PASSWORD"
            )
        with (
            self._talking(f"logging in as {username!r}"),
            self._refused_login(
                f"the login of {username!r}", "check mailbox.username and the password"
            ),
        ):
            client.login(username, password.get_secret_value())
        log.debug("%s: logged in", self.identity)

    def _login_oauth2(self) -> None:
        """SASL XOAUTH2 with a token read just now: provider tokens live about an hour."""
        client = self._connected()
        username = self.settings.username or ""
        if not client.has_capability("AUTH=XOAUTH2"):
            raise MailboxLoginRefused(
                f"{self._server} does not offer AUTH=XOAUTH2; "
                "check mailbox.host, or use mailbox.auth = 'password'"
            )
        try:
            token = read_access_token(self.settings.oauth2, self._resolve, key="mailbox.oauth2")
        except AccessTokenUnavailable as exc:
            raise MailboxLoginRefused(f"{self._server}: no access token: {exc}") from exc
        with (
            self._talking(f"logging in as {username!r} with OAuth2"),
            self._refused_login(
                f"the OAuth2 login of {username!r}",
                "check mailbox.username and that the token from mailbox.oauth2 is current "
                "and allows IMAP for this mailbox",
            ),
        ):
            client.oauth2_login(username, token)
        log.debug("%s: logged in with OAuth2", self.identity)

    @contextmanager
    def _refused_login(self, login: str, advice: str) -> Iterator[None]:
        """Turn the server's refusal of `login` into MailboxLoginRefused with `advice`."""
        try:
            yield
        except LoginError as exc:
            raise MailboxLoginRefused(
                f"{self._server} refused {login} ({_reason(exc)}); {advice}"
            ) from exc

    def _select_inbox(self) -> None:
        client = self._connected()
        with self._talking("reading the folder layout"):
            self._separator = self._folder_separator(client)
        name = self._server_folder(self.folder)
        with self._talking(f"opening folder {name}"):
            try:
                status = client.select_folder(name)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as exc:
                if not client.folder_exists(name):
                    raise MailboxFolderMissing(
                        f"{self._server}: folder {name!r} does not exist for "
                        f"{self.settings.username!r}; check mailbox.folder"
                    ) from exc
                raise
        if b"READ-WRITE" not in status:
            raise MailboxError(
                f"{self._server}: folder {name!r} opened read-only; "
                "Portaria must be able to move messages out of it"
            )
        self.folder = name
        self.uidvalidity = int(status[b"UIDVALIDITY"])
        log.info(
            "%s: opened, %s messages, UIDVALIDITY %s",
            self.identity,
            status.get(b"EXISTS"),
            self.uidvalidity,
        )

    # Folders and keys

    @staticmethod
    def _folder_separator(client: IMAPClient) -> str | None:
        if client.has_capability("NAMESPACE"):
            personal = client.namespace().personal
            if personal:
                return personal[0][1]
        # RFC 3501 6.3.8: LIST "" "" answers with the hierarchy delimiter.
        listing = client.list_folders("", "")
        delimiter = listing[0][1] if listing else None
        return delimiter.decode() if isinstance(delimiter, bytes) else delimiter

    def _server_folder(self, folder: str) -> str:
        """The server's name for a folder written with "/" between levels."""
        if folder.upper() == "INBOX" or not self._separator:
            return folder
        return self._separator.join(folder.split("/"))

    def _ensure_folder(self, name: str) -> None:
        if name in self._known_folders:
            return
        client = self._connected()
        with self._talking(f"creating folder {name}"):
            if not client.folder_exists(name):
                try:
                    client.create_folder(name)
                except IMAPClientAbortError:
                    raise
                except IMAPClientError:
                    # Another process may have created it since we listed.
                    if not client.folder_exists(name):
                        raise
                else:
                    log.info("%s: created folder %s", self.identity, name)
                    self._subscribe(client, name)
        self._known_folders.add(name)

    def _subscribe(self, client: IMAPClient, name: str) -> None:
        # Many mail clients show only subscribed folders; a person looking for
        # the processed requests should find them.
        try:
            client.subscribe_folder(name)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            log.debug("%s: subscribing to %s failed: %s", self.identity, name, exc)

    def _copy_and_expunge(self, client: IMAPClient, uids: list[int], target: str) -> None:
        client.copy(uids, target)
        client.add_flags(uids, [b"\\Deleted"], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        else:
            # Without UIDPLUS, EXPUNGE also removes any other message someone
            # marked \Deleted in this folder; there is no narrower command.
            client.expunge()

    def _addressable_uids(self, keys: Sequence[str], doing: str) -> list[int]:
        uids: list[int] = []
        foreign = 0
        for key in keys:
            validity, _, uid = key.partition(":")
            if int(validity) == self.uidvalidity:
                uids.append(int(uid))
            else:
                foreign += 1
        if foreign:
            log.warning(
                "%s: cannot %s %d messages with keys from another UIDVALIDITY (now %s)",
                self.identity,
                doing,
                foreign,
                self.uidvalidity,
            )
        return uids

    # Errors

    def _connected(self) -> IMAPClient:
        if self._client is None:
            raise MailboxError(f"{self.identity}: not connected; use the mailbox in a with block")
        return self._client

    @contextmanager
    def _talking(self, doing: str) -> Iterator[None]:
        """Turn imapclient, socket and TLS errors into mailbox errors naming the server."""
        try:
            yield
        except MailboxError:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise MailboxUnavailable(
                f"{self._server}: {doing}: the server's certificate is not trusted "
                f"({exc.verify_message}); set mailbox.ca_file to the CA that signed it"
            ) from exc
        except (OSError, IMAPClientAbortError) as exc:
            # OSError covers refused connections, timeouts, DNS and TLS failures.
            raise MailboxUnavailable(f"{self._server}: {doing}: {_reason(exc)}") from exc
        except IMAPClientError as exc:
            raise MailboxError(f"{self._server}: {doing}: {_reason(exc)}") from exc


def imap_identity(settings: MailboxSettings) -> str:
    """The stable name of an IMAP inbox folder, e.g. ``imap://user@host:993/INBOX``."""
    host = settings.host or ""
    if ":" in host:
        host = f"[{host}]"
    user = quote(settings.username or "", safe="")
    return f"imap://{user}@{host}:{settings.effective_port}/{quote(settings.folder, safe='/')}"


def _uid_set(uids: Sequence[int]) -> str:
    return ",".join(str(uid) for uid in uids)


def _announces_new_mail(response: tuple[object, ...]) -> bool:
    return len(response) >= 2 and response[1] == b"EXISTS"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(exc: BaseException) -> str:
    """The server's or the system's words for a failure, without Python decoration."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc.args[0]) if exc.args else str(exc) or type(exc).__name__
    # imaplib hands over server text as bytes; show it as the server wrote it.
    if text.startswith(("b'", 'b"')) and text.endswith(text[1]):
        text = text[2:-1]
    return text


class MaildirMailbox:
    """A local Maildir as the inbox, with Maildir++ subfolders. See :class:`MailboxSource`.

    The layout is the one Dovecot uses (``.Processed/cur`` beside ``cur``), so
    a person can open the same directory with any mail client. Keys are the
    ones Python's :class:`mailbox.Maildir` gives: the file name before ":".
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.identity = f"maildir:{path}"
        self._known_folders: set[str] = set()

    def __enter__(self) -> MaildirMailbox:
        # A missing inbox is a typo far more often than a fresh install (init makes
        # it): creating it would read an empty folder for ever and call that fine.
        if not self.path.is_dir():
            raise MailboxFolderMissing(
                f"Maildir {self.path} não existe (does not exist); corrija mailbox.maildir "
                "ou rode (run) `portaria init`"
            )
        try:
            _make_maildir(self.path)
        except OSError as exc:
            raise MailboxUnavailable(
                f"Maildir {self.path}: cannot create it: {_reason(exc)}; check mailbox.maildir"
            ) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def keys(self) -> list[str]:
        files = self._files()
        log.debug("%s: %d messages in the inbox folder", self.identity, len(files))
        return sorted(files, key=_arrival_order)

    def fetch(self, keys: Sequence[str], max_bytes: int | None = None) -> Iterator[Fetched]:
        def read(path: Path) -> tuple[bytes, int]:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                oversize = max_bytes is not None and size > max_bytes
                return file.read(HEADER_BLOCK_BYTES if oversize else -1), size

        for key, (raw, size) in self._each_file(keys, read, lambda key: f"read message {key}"):
            yield Fetched(key, raw, size)

    def move(self, keys: Sequence[str], folder: str) -> None:
        if not keys:
            return
        target = self._folder_path(folder)

        def rename(path: Path) -> None:
            # Same filesystem, so the rename is atomic: the message is
            # in exactly one of the two folders at any moment.
            os.rename(path, target / "cur" / _cur_name(path.name))

        done = self._each_file(keys, rename, lambda key: f"move message {key} to {folder}")
        moved = sum(1 for _ in done)
        log.info(
            "%s: moved %d messages to %s (%d already gone)",
            self.identity,
            moved,
            folder,
            len(keys) - moved,
        )

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        before = self._stamp()
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(MAILDIR_CHECK_INTERVAL, remaining))
            if self._stamp() != before:
                return True
        return False

    def _files(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        try:
            for subdir in ("cur", "new"):
                with os.scandir(self.path / subdir) as entries:
                    for entry in entries:
                        # Dot files are not messages (editors, tools, lock files).
                        if entry.name.startswith(".") or not entry.is_file():
                            continue
                        key = entry.name.split(MAILDIR_INFO_SEPARATOR, 1)[0]
                        files[key] = Path(entry.path)
        except OSError as exc:
            raise MailboxUnavailable(f"{self.identity}: cannot list: {_reason(exc)}") from exc
        return files

    def _each_file(
        self, keys: Sequence[str], act: Callable[[Path], _Done], doing: Callable[[str], str]
    ) -> Iterator[tuple[str, _Done]]:
        """Apply `act` to the file of each key still in the Maildir: (key, result).

        A file that a mail client renamed meanwhile is looked up once more.
        `doing(key)` names the act in the error when a file cannot be used.
        """
        files = self._files()
        for key in keys:
            for _attempt in range(2):
                path = files.get(key)
                if path is None:
                    break
                try:
                    done = act(path)
                except FileNotFoundError:
                    # A mail client renamed it (new flags, or new/ to cur/).
                    files = self._files()
                    continue
                except OSError as exc:
                    raise MailboxError(
                        f"{self.identity}: cannot {doing(key)}: {_reason(exc)}"
                    ) from exc
                yield key, done
                break

    def _folder_path(self, folder: str) -> Path:
        # Maildir++ keeps every level in one directory name, "." between levels.
        path = self.path / ("." + folder.strip("/").replace("/", "."))
        if folder not in self._known_folders:
            try:
                _make_maildir(path)
                (path / "maildirfolder").touch()
            except OSError as exc:
                raise MailboxError(
                    f"{self.identity}: cannot create folder {folder}: {_reason(exc)}"
                ) from exc
            self._known_folders.add(folder)
        return path

    def _stamp(self) -> tuple[int, int]:
        try:
            return (
                os.stat(self.path / "new").st_mtime_ns,
                os.stat(self.path / "cur").st_mtime_ns,
            )
        except OSError as exc:
            raise MailboxUnavailable(f"{self.identity}: cannot look: {_reason(exc)}") from exc


def _arrival_order(key: str) -> list[tuple[int, str]]:
    """Sort key for Maildir names, which start with the delivery time.

    Numbers compare as numbers: the microseconds in "1796404380.M847414P12"
    are not zero-padded, so text order would put .M99 after .M847414.
    """
    return [(int(part), "") if part.isdigit() else (-1, part) for part in _DIGITS.split(key)]


def _make_maildir(path: Path) -> None:
    for subdir in ("cur", "new", "tmp"):
        (path / subdir).mkdir(parents=True, exist_ok=True)


def _cur_name(name: str) -> str:
    # A message in cur/ carries an info part; one straight from new/ has none yet.
    return name if MAILDIR_INFO_SEPARATOR in name else name + MAILDIR_INFO_SEPARATOR + "2,"
