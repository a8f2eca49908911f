"""Tests of the mailbox sources against a real Dovecot and a real Maildir.

What every source promises (keys, fetch, move, wait) runs against both; what
only IMAP has (TLS, login, UIDVALIDITY, batching on the wire, the COPY
fallback) runs against Dovecot alone. Mail is loaded and inspected from
outside the source: over a separate IMAP connection, or as files.
"""

from __future__ import annotations

import logging
import mailbox
import os
import re
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from config.settings import MailboxSettings
from intake.policy import HEADER_BLOCK_BYTES
from intake.sources import (
    Fetched,
    ImapMailbox,
    MailboxError,
    MailboxFolderMissing,
    MailboxLoginRefused,
    MailboxSource,
    MailboxUnavailable,
    MaildirMailbox,
    open_source,
)
from tests.servers.dovecot import DovecotServer, ImapAccount

WIRE_LOG = "imapclient.imaplib"
# A command line in imapclient's debug log: "> b'TAG UID FETCH 1,2 (BODY.PEEK[])'".
WIRE_COMMAND = re.compile(r"> b'\w+ ((?:UID )?[A-Z]+)")


def request_email(number: int) -> bytes:
    """A small #ACESSO request with CRLF line ends (as IMAP returns them) and 8-bit text."""
    return (
        f"From: Gestora {number} <gestora{number}@cliente.example>\r\n"
        "To: acesso@portaria.example\r\n"
        f"Subject: #ACESSO pedido {number}\r\n"
        f"Message-ID: <pedido-{number}@cliente.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        f"Nome: Jo\xe3o {number}\r\n"
        "Acesso: Agente\r\n"
    ).encode("latin-1")


# The same mailbox seen from outside, for an IMAP account and for a Maildir.

MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen"}


@dataclass
class ImapMailboxUnderTest:
    account: ImapAccount

    def source(self, **overrides: Any) -> MailboxSource:
        return open_source(self.account.mailbox_settings(**overrides), Path.absolute)

    def append(self, raw: bytes | Sequence[bytes], flags: Sequence[str] = ()) -> None:
        self.account.append(raw, flags=flags)

    def deliver(self, raw: bytes) -> None:
        self.account.append(raw)

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        return self.account.messages(folder)

    def flags(self, folder: str = "INBOX") -> list[set[str]]:
        return self.account.flags(folder)

    def folders(self) -> list[str]:
        return self.account.folders()


@dataclass
class MaildirUnderTest:
    """A Maildir with Maildir++ subfolders, written and read as plain files."""

    config_dir: Path
    _serial: Iterator[int] = field(default_factory=lambda: count(1))

    @property
    def path(self) -> Path:
        return self.config_dir / "mail" / "inbox"

    def source(self, **overrides: Any) -> MailboxSource:
        # A relative path, as in portaria.toml, anchored by resolve; `portaria init`
        # makes the inbox folder.
        self.path.mkdir(parents=True, exist_ok=True)
        settings = MailboxSettings(kind="maildir", maildir=Path("mail/inbox"), **overrides)
        return open_source(settings, lambda path: self.config_dir / path)

    def append(self, raw: bytes | Sequence[bytes], flags: Sequence[str] = ()) -> None:
        letters = "".join(sorted(k for k, flag in MAILDIR_FLAGS.items() if flag in flags))
        for message in [raw] if isinstance(raw, bytes) else raw:
            # Names sort in delivery order, so keys() lists them as appended.
            name = f"1700000000.M{next(self._serial):06d}P1.tests"
            # Flagged mail has been seen by a client and lives in cur/.
            subdir, name = ("cur", f"{name}:2,{letters}") if flags else ("new", name)
            self._write(name, message, subdir)

    def deliver(self, raw: bytes) -> None:
        self._write(f"1800000000.M{next(self._serial):06d}P1.tests", raw, "new")

    def _write(self, name: str, raw: bytes, subdir: str) -> None:
        for part in ("cur", "new", "tmp"):
            (self.path / part).mkdir(parents=True, exist_ok=True)
        (self.path / "tmp" / name).write_bytes(raw)
        os.rename(self.path / "tmp" / name, self.path / subdir / name)

    def files(self, folder: str = "INBOX") -> list[Path]:
        root = self.path if folder == "INBOX" else self.path / ("." + folder.replace("/", "."))
        found = [*root.glob("cur/*"), *root.glob("new/*")]
        return sorted(found, key=lambda path: path.name)

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        return [path.read_bytes() for path in self.files(folder)]

    def flags(self, folder: str = "INBOX") -> list[set[str]]:
        return [
            {MAILDIR_FLAGS[letter] for letter in path.name.partition(":2,")[2]}
            for path in self.files(folder)
        ]

    def folders(self) -> list[str]:
        subfolders = [
            entry.name[1:].replace(".", "/")
            for entry in self.path.iterdir()
            if entry.name.startswith(".") and (entry / "cur").is_dir()
        ]
        return sorted(["INBOX", *subfolders])


MailboxUnderTest = ImapMailboxUnderTest | MaildirUnderTest


@pytest.fixture(params=[pytest.param("imap", marks=pytest.mark.imap), "maildir"])
def mailbox_under_test(request: pytest.FixtureRequest, tmp_path: Path) -> MailboxUnderTest:
    if request.param == "imap":
        return ImapMailboxUnderTest(request.getfixturevalue("imap_account"))
    return MaildirUnderTest(tmp_path)


@contextmanager
def imap_commands(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """The IMAP commands sent inside the block, in order, read from imapclient's wire log."""
    sent: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="imapclient"):
        first = len(caplog.records)
        yield sent
        lines = [record.getMessage() for record in caplog.records[first:]]
    sent.extend(match[1] for line in lines if (match := WIRE_COMMAND.match(line)))


# Behaviour every source promises.


class TestReadingTheInbox:
    def test_keys_list_every_message_and_fetch_returns_their_exact_bytes(
        self, mailbox_under_test: MailboxUnderTest
    ) -> None:
        sent = [request_email(n) for n in range(1, 4)]
        mailbox_under_test.append(sent)

        with mailbox_under_test.source() as source:
            keys = source.keys()
            fetched = list(source.fetch(keys))

        assert len(set(keys)) == 3
        assert fetched == [
            Fetched(key, raw, len(raw)) for key, raw in zip(keys, sent, strict=True)
        ]

    def test_an_oversize_message_is_fetched_only_as_far_as_its_headers(
        self, mailbox_under_test: MailboxUnderTest
    ) -> None:
        small = request_email(1)
        # Bigger than what is read of an oversize message, so a whole download shows.
        big = request_email(2).replace(b"\r\n\r\n", b"\r\n\r\n" + b"y" * 300_000 + b"\r\n", 1)
        mailbox_under_test.append([small, big])

        with mailbox_under_test.source() as source:
            fetched = list(source.fetch(source.keys(), max_bytes=len(small)))

        assert [(f.raw, f.size, f.whole) for f in fetched] == [
            (small, len(small), True),
            (big[:HEADER_BLOCK_BYTES], len(big), False),
        ]

    def test_fetch_leaves_messages_unseen(self, mailbox_under_test: MailboxUnderTest) -> None:
        mailbox_under_test.append([request_email(1), request_email(2)])

        with mailbox_under_test.source() as source:
            assert len(list(source.fetch(source.keys()))) == 2

        assert mailbox_under_test.flags() == [set(), set()]

    def test_fetch_skips_keys_no_longer_in_the_inbox(
        self, mailbox_under_test: MailboxUnderTest
    ) -> None:
        mailbox_under_test.append([request_email(1), request_email(2)])

        with mailbox_under_test.source() as source:
            first, second = source.keys()
            source.move([first], "Processed")
            fetched = list(source.fetch([first, second]))

        assert fetched == [Fetched(second, request_email(2), len(request_email(2)))]

    def test_an_empty_inbox_has_nothing_to_fetch_or_move(
        self, mailbox_under_test: MailboxUnderTest
    ) -> None:
        with mailbox_under_test.source() as source:
            assert source.keys() == []
            assert list(source.fetch([])) == []
            source.move([], "Processed")

        assert mailbox_under_test.folders() == ["INBOX"]


class TestMovingMessages:
    def test_move_creates_the_folder_and_takes_the_messages_out_of_the_inbox(
        self, mailbox_under_test: MailboxUnderTest
    ) -> None:
        mailbox_under_test.append([request_email(n) for n in range(1, 4)])

        with mailbox_under_test.source() as source:
            first, second, third = source.keys()
            source.move([first, third], "Processed")
            left = source.keys()

        assert left == [second]
        assert mailbox_under_test.folders() == ["INBOX", "Processed"]
        assert mailbox_under_test.messages("Processed") == [request_email(1), request_email(3)]
        assert mailbox_under_test.messages() == [request_email(2)]

    def test_moving_the_same_messages_again_after_a_restart_is_harmless(
        self, mailbox_under_test: MailboxUnderTest
    ) -> None:
        mailbox_under_test.append([request_email(1), request_email(2)])

        with mailbox_under_test.source() as source:
            keys = source.keys()
            source.move(keys, "NeedsAttention")
            source.move(keys, "NeedsAttention")
        # The process died between the commit and marking the move done.
        with mailbox_under_test.source() as source:
            source.move(keys, "NeedsAttention")
            assert source.keys() == []

        assert mailbox_under_test.messages("NeedsAttention") == [
            request_email(1),
            request_email(2),
        ]

    def test_move_into_a_nested_folder(self, mailbox_under_test: MailboxUnderTest) -> None:
        mailbox_under_test.append(request_email(1))

        with mailbox_under_test.source() as source:
            source.move(source.keys(), "Portaria/Processed")

        assert "Portaria/Processed" in mailbox_under_test.folders()
        assert mailbox_under_test.messages("Portaria/Processed") == [request_email(1)]

    def test_move_keeps_the_flags_a_person_set(self, mailbox_under_test: MailboxUnderTest) -> None:
        mailbox_under_test.append(request_email(1), flags=["\\Flagged", "\\Seen"])
        mailbox_under_test.append(request_email(2))

        with mailbox_under_test.source() as source:
            source.move(source.keys(), "Processed")

        assert mailbox_under_test.flags("Processed") == [{"\\Flagged", "\\Seen"}, set()]


class TestWaitingForMail:
    def test_wait_returns_false_when_nothing_arrives(
        self, mailbox_under_test: MailboxUnderTest
    ) -> None:
        with mailbox_under_test.source() as source:
            assert source.wait(0.3) is False

    def test_wait_returns_true_when_mail_arrives(
        self, mailbox_under_test: MailboxUnderTest
    ) -> None:
        woken = threading.Event()

        def deliver_until_woken() -> None:
            # Keep delivering: one delivery is bound to land after wait() began.
            for number in range(1, 50):
                mailbox_under_test.deliver(request_email(number))
                if woken.wait(0.2):
                    return

        with mailbox_under_test.source() as source:
            sender = threading.Thread(target=deliver_until_woken)
            sender.start()
            try:
                result = source.wait(30)
            finally:
                woken.set()
                sender.join()
            assert len(source.keys()) >= 1

        assert result is True


# IMAP only: connection security, login, folders, UIDVALIDITY, batching.


@pytest.mark.imap
class TestImapConnection:
    @pytest.mark.parametrize("security", ["plain", "starttls", "ssl"])
    def test_connects_logs_in_and_reads(self, imap_account: ImapAccount, security: str) -> None:
        imap_account.append([request_email(1), request_email(2)])
        settings = imap_account.mailbox_settings(security=security)

        with open_source(settings, Path.absolute) as source:
            keys = source.keys()
            fetched = [item.raw for item in source.fetch(keys)]

        port = imap_account.ssl_port if security == "ssl" else imap_account.port
        assert isinstance(source, ImapMailbox)
        assert source.identity == f"imap://{imap_account.username}@127.0.0.1:{port}/INBOX"
        assert fetched == [request_email(1), request_email(2)]

    @pytest.mark.parametrize("security", ["starttls", "ssl"])
    def test_a_certificate_not_signed_by_a_trusted_ca_is_refused(
        self, imap_account: ImapAccount, security: str
    ) -> None:
        settings = imap_account.mailbox_settings(security=security, ca_file=None)
        port = imap_account.ssl_port if security == "ssl" else imap_account.port

        with pytest.raises(MailboxUnavailable) as caught:
            open_source(settings, Path.absolute).__enter__()

        assert str(caught.value).startswith(f"IMAP server 127.0.0.1:{port}: ")
        assert "the server's certificate is not trusted (self-signed certificate)" in str(
            caught.value
        )

    def test_a_wrong_password_is_refused_without_showing_it(
        self, imap_account: ImapAccount, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        settings = imap_account.mailbox_settings(password="not-the-password")

        with pytest.raises(MailboxLoginRefused) as caught:
            open_source(settings, Path.absolute).__enter__()

        assert str(caught.value) == (
            f"IMAP server 127.0.0.1:{imap_account.port} refused the login of "
            f"'{imap_account.username}' ([AUTHENTICATIONFAILED] Authentication failed.); "
            "check mailbox.username and the password"
        )
        assert "not-the-password" not in caplog.text

    def test_the_password_never_reaches_the_log(
        self, imap_account: ImapAccount, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)

        with open_source(imap_account.mailbox_settings(), Path.absolute) as source:
            source.keys()

        assert any(record.name == WIRE_LOG for record in caplog.records)
        assert imap_account.password not in caplog.text

    def test_a_missing_inbox_folder_is_named(self, imap_account: ImapAccount) -> None:
        settings = imap_account.mailbox_settings(folder="Requests")

        with pytest.raises(MailboxFolderMissing) as caught:
            open_source(settings, Path.absolute).__enter__()

        assert str(caught.value) == (
            f"IMAP server 127.0.0.1:{imap_account.port}: folder 'Requests' does not exist "
            f"for '{imap_account.username}'; check mailbox.folder"
        )

    def test_another_inbox_folder_can_be_read(self, imap_account: ImapAccount) -> None:
        imap_account.append(request_email(1), folder="Requests")

        with open_source(
            imap_account.mailbox_settings(folder="Requests"), Path.absolute
        ) as source:
            source.move(source.keys(), "Processed")

        assert imap_account.messages("Processed") == [request_email(1)]
        assert imap_account.messages("Requests") == []

    def test_a_server_that_does_not_answer_is_unavailable(self, imap_account: ImapAccount) -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
            settings = imap_account.mailbox_settings(port=port)

            with pytest.raises(MailboxUnavailable) as caught:
                open_source(settings, Path.absolute).__enter__()

        assert str(caught.value) == f"IMAP server 127.0.0.1:{port}: connecting: Connection refused"

    def test_a_server_restart_breaks_the_open_connection(
        self, imap_account: ImapAccount, dovecot_server: DovecotServer
    ) -> None:
        imap_account.append(request_email(1))

        with open_source(imap_account.mailbox_settings(), Path.absolute) as source:
            dovecot_server.stop()
            dovecot_server.start()
            with pytest.raises(MailboxUnavailable) as caught:
                source.keys()

        assert str(caught.value).startswith(
            f"IMAP server 127.0.0.1:{imap_account.port}: listing the messages in INBOX: "
        )
        with open_source(imap_account.mailbox_settings(), Path.absolute) as source:
            assert len(source.keys()) == 1

    def test_without_idle_wait_only_sleeps(self, imap_account: ImapAccount) -> None:
        with open_source(imap_account.mailbox_settings(idle=False), Path.absolute) as source:
            imap_account.append(request_email(1))
            assert source.wait(0.2) is False
            assert len(source.keys()) == 1

    def test_using_a_mailbox_outside_its_with_block_is_an_error(
        self, imap_account: ImapAccount
    ) -> None:
        source = open_source(imap_account.mailbox_settings(), Path.absolute)

        with pytest.raises(MailboxError, match="not connected; use the mailbox in a with block"):
            source.keys()


@pytest.mark.imap
class TestImapKeys:
    def test_keys_are_uidvalidity_and_uid(self, imap_account: ImapAccount) -> None:
        imap_account.append([request_email(n) for n in range(1, 4)])
        uidvalidity = imap_account.uidvalidity()

        with open_source(imap_account.mailbox_settings(), Path.absolute) as source:
            assert isinstance(source, ImapMailbox)
            assert source.uidvalidity == uidvalidity
            assert source.keys() == [f"{uidvalidity}:1", f"{uidvalidity}:2", f"{uidvalidity}:3"]

    def test_keys_from_another_uidvalidity_are_left_alone(
        self, imap_account: ImapAccount, caplog: pytest.LogCaptureFixture
    ) -> None:
        imap_account.append(request_email(1))
        stale = f"{imap_account.uidvalidity() - 1}:1"

        with open_source(imap_account.mailbox_settings(), Path.absolute) as source:
            assert list(source.fetch([stale])) == []
            source.move([stale], "Processed")

        assert imap_account.messages() == [request_email(1)]
        assert "cannot move 1 messages with keys from another UIDVALIDITY" in caplog.text


@pytest.mark.imap
class TestImapBatching:
    def test_fetch_reads_batch_size_messages_per_command(
        self, imap_account: ImapAccount, caplog: pytest.LogCaptureFixture
    ) -> None:
        sent = [request_email(n) for n in range(1, 451)]
        imap_account.append(sent)
        settings = imap_account.mailbox_settings(batch_size=200)

        with imap_commands(caplog) as commands, open_source(settings, Path.absolute) as source:
            fetched = [item.raw for item in source.fetch(source.keys())]

        # Per batch of 200: one FETCH for the sizes, one for the messages.
        assert commands.count("UID FETCH") == 6
        assert fetched == sent
        assert imap_account.flags() == [set()] * 450

    def test_move_sends_at_most_500_messages_per_command(
        self, imap_account: ImapAccount, caplog: pytest.LogCaptureFixture
    ) -> None:
        imap_account.append([request_email(n) for n in range(1, 1202)])
        settings = imap_account.mailbox_settings()

        with imap_commands(caplog) as commands, open_source(settings, Path.absolute) as source:
            source.move(source.keys(), "Processed")

        assert commands.count("UID MOVE") == 3
        assert len(imap_account.messages("Processed")) == 1201
        assert imap_account.messages() == []


@pytest.mark.imap
class TestImapServerWithoutMove:
    @pytest.fixture(params=[("MOVE",), ("MOVE", "UIDPLUS")], ids=["uidplus", "no-uidplus"])
    def hidden(
        self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
    ) -> tuple[str, ...]:
        """Make the real server look older by hiding capabilities from the client."""
        hidden: tuple[str, ...] = request.param
        offered = IMAPClient.has_capability

        def has_capability(client: IMAPClient, capability: str) -> bool:
            return capability.upper() not in hidden and offered(client, capability)

        monkeypatch.setattr(IMAPClient, "has_capability", has_capability)
        return hidden

    def test_move_copies_then_expunges(
        self,
        imap_account: ImapAccount,
        hidden: tuple[str, ...],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        imap_account.append([request_email(n) for n in range(1, 4)])

        with open_source(imap_account.mailbox_settings(), Path.absolute) as source:
            first, second, third = source.keys()
            with imap_commands(caplog) as commands:
                source.move([first, third], "Processed")
                source.move([first, third], "Processed")
            assert source.keys() == [second]

        expunge = "EXPUNGE" if "UIDPLUS" in hidden else "UID EXPUNGE"
        assert commands == [
            "LIST", "CREATE", "SUBSCRIBE",
            "UID SEARCH", "UID COPY", "UID STORE", expunge,
            "UID SEARCH",
        ]  # fmt: skip
        assert imap_account.messages("Processed") == [request_email(1), request_email(3)]
        assert imap_account.messages() == [request_email(2)]
        assert imap_account.flags("Processed") == [set(), set()]


@pytest.mark.imap
class TestImapFolderCreation:
    def test_a_folder_created_by_another_process_meanwhile_is_used(
        self,
        imap_account: ImapAccount,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        imap_account.append(request_email(1))
        imap_account.append(request_email(2), folder="Processed")
        # Our first look at the folder list happened before the other process
        # created the folder; our CREATE then fails with ALREADYEXISTS.
        exists = IMAPClient.folder_exists
        monkeypatch.setattr(IMAPClient, "folder_exists", _first_answer_false(exists, "Processed"))

        with open_source(imap_account.mailbox_settings(), Path.absolute) as source:
            keys = source.keys()
            with imap_commands(caplog) as commands:
                source.move(keys, "Processed")

        assert commands == ["CREATE", "LIST", "UID SEARCH", "UID MOVE"]
        assert imap_account.messages("Processed") == [request_email(2), request_email(1)]

    def test_created_folders_are_subscribed(self, imap_account: ImapAccount) -> None:
        imap_account.append(request_email(1))

        with open_source(imap_account.mailbox_settings(), Path.absolute) as source:
            source.move(source.keys(), "Processed")

        with imap_account.connect() as client:
            subscribed = [name for _flags, _separator, name in client.list_sub_folders()]
        assert "Processed" in subscribed


def _first_answer_false(exists: Any, folder: str) -> Any:
    """folder_exists that says no once for ``folder``, then asks the server."""
    asked: set[str] = set()

    def folder_exists(client: IMAPClient, name: str) -> bool:
        if name == folder and name not in asked:
            asked.add(name)
            return False
        return exists(client, name)

    return folder_exists


# Maildir only: layout on disk.


class TestMaildirLayout:
    def test_a_missing_inbox_is_named_not_created(self, tmp_path: Path) -> None:
        settings = MailboxSettings(kind="maildir", maildir=Path("caixa-com-erro"))

        with pytest.raises(MailboxFolderMissing) as caught:
            open_source(settings, lambda path: tmp_path / path).__enter__()

        assert f"Maildir {tmp_path / 'caixa-com-erro'} não existe" in str(caught.value)
        assert not (tmp_path / "caixa-com-erro").exists()

    def test_the_inbox_is_created_when_missing(self, tmp_path: Path) -> None:
        maildir = MaildirUnderTest(tmp_path)

        with maildir.source() as source:
            assert source.identity == f"maildir:{tmp_path}/mail/inbox"
            assert source.keys() == []

        assert sorted(path.name for path in maildir.path.iterdir()) == ["cur", "new", "tmp"]

    def test_keys_come_in_delivery_order_when_microseconds_differ_in_width(
        self, tmp_path: Path
    ) -> None:
        # Python's mailbox.Maildir writes microseconds without zero padding.
        maildir = MaildirUnderTest(tmp_path)
        names = ["1796404380.M99P7Q1.host", "1796404380.M847414P7Q2.host"]
        for name, number in zip(reversed(names), (2, 1), strict=True):
            maildir._write(name, request_email(number), "new")

        with maildir.source() as source:
            keys = source.keys()
            first = next(source.fetch(keys[:1]))

        assert keys == names
        assert first.raw == request_email(1)

    def test_keys_are_those_of_python_mailbox(self, tmp_path: Path) -> None:
        maildir = MaildirUnderTest(tmp_path)
        maildir.append(request_email(1))
        maildir.append(request_email(2), flags=["\\Seen"])

        with maildir.source() as source:
            keys = source.keys()

        assert keys == sorted(mailbox.Maildir(maildir.path, create=False).keys())
        assert keys == ["1700000000.M000001P1.tests", "1700000000.M000002P1.tests"]

    def test_moved_messages_land_in_a_maildir_plus_plus_folder(self, tmp_path: Path) -> None:
        maildir = MaildirUnderTest(tmp_path)
        maildir.append(request_email(1))
        maildir.append(request_email(2), flags=["\\Answered", "\\Seen"])

        with maildir.source() as source:
            source.move(source.keys(), "Portaria/Processed")

        folder = maildir.path / ".Portaria.Processed"
        assert (folder / "maildirfolder").is_file()
        assert sorted(path.name for path in (folder / "cur").iterdir()) == [
            "1700000000.M000001P1.tests:2,",
            "1700000000.M000002P1.tests:2,RS",
        ]
        assert list((folder / "new").iterdir()) == []
        assert maildir.files() == []

    def test_the_maildir_source_is_chosen_by_default(self, tmp_path: Path) -> None:
        source = open_source(MailboxSettings(), lambda path: tmp_path / path)

        assert isinstance(source, MaildirMailbox)
        assert source.identity == f"maildir:{tmp_path}/var/mail/inbox"
