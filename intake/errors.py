"""Errors raised by the intake stages (read, screen, extract).

Intake turns almost every input into a decision rather than an exception: a
message that cannot be screened or extracted still yields an "ignored" or
"incomplete" outcome. Only input that is not a mail message at all raises.
"""


class IntakeError(Exception):
    """Base class for every error the intake stages raise."""


class UnreadableMessage(IntakeError):
    """The bytes given are not an RFC 5322 message (empty, or no header block)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
