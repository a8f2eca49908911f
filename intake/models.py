"""Tables of the intake: every message read from a mailbox, and each mailbox's state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from portaria.db import Base, utcnow

# What became of a message. "left" = not tagged, left alone in the inbox.
MESSAGE_OUTCOMES = ("request", "incomplete", "ignored", "held", "unreadable", "duplicate", "left")


class InboundMessage(Base):
    """A message seen in a mailbox, recorded before anything is done about it.

    ``destination`` is the folder the message must end in; ``moved_at`` is set
    once it is there. A row with a destination and no ``moved_at`` is a move
    still owed (the process stopped between the commit and the move).
    """

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("mailbox", "mailbox_key", name="uq_inbound_messages_mailbox_key"),
        Index("ix_inbound_messages_message_id_sha256", "message_id", "sha256"),
        Index("ix_inbound_messages_pending_move", "mailbox", "moved_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(500))  # source identity, e.g. imap://u@h/INBOX
    mailbox_key: Mapped[str] = mapped_column(String(255))  # "uidvalidity:uid" or Maildir key
    message_id: Mapped[str | None] = mapped_column(String(998))
    sha256: Mapped[str] = mapped_column(String(64))
    # Sender and body only: what a copy delivered again by another route keeps.
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int]
    sender: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(12))
    reason: Mapped[str] = mapped_column(Text, default="")
    destination: Mapped[str | None] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    moved_at: Mapped[datetime | None]


class MailboxState(Base):
    """What the poller knows of one mailbox between runs."""

    __tablename__ = "mailbox_state"

    mailbox: Mapped[str] = mapped_column(String(500), primary_key=True)
    uidvalidity: Mapped[int | None]
    last_poll_at: Mapped[datetime | None]
    last_result: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_success_at: Mapped[datetime | None]
    # Set at the first failed poll after a success; cleared on recovery.
    failing_since: Mapped[datetime | None]
    # When the admin was told the mailbox is failing; cleared when told it recovered.
    alert_sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AutoReply(Base):
    """One automatic answer sent to one address: the ledger behind the hourly cap."""

    __tablename__ = "auto_replies"
    __table_args__ = (Index("ix_auto_replies_recipient_at", "recipient", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    recipient: Mapped[str] = mapped_column(String(320))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))
