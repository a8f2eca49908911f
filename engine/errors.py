"""Errors of the engine: customers, playbooks, tasks, rules and the business calendar.

Every message is one line a person can act on, Brazilian Portuguese first and
English in parentheses, e.g. "Cliente não encontrado (customer not found): ACME".
"""

from __future__ import annotations

from dataclasses import dataclass

from portaria.errors import PortariaError


class EngineError(PortariaError):
    """Something in the automation engine that cannot be done as asked."""


class CalendarError(EngineError):
    """The business calendar cannot be built from the settings given."""


class CustomerNotFound(EngineError):
    """No customer card has the given code or id."""


class UserNotFound(EngineError):
    """No user has the given email (a filter by owner or assignee)."""


class InvalidCustomerValue(EngineError):
    """A customer field got a value it cannot hold (bad date, number, email, owner...)."""


class CustomFieldError(EngineError):
    """A custom field that cannot be defined as asked (duplicate key, bad kind, no choices)."""


@dataclass(frozen=True)
class RowProblem:
    """One wrong cell or row of an import file; ``line`` counts the header as line 1."""

    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"linha {self.line}" + (f", coluna {self.column}" if self.column else "")
        return f"{where}: {self.reason}"


class CustomerImportRejected(EngineError):
    """An import file with at least one wrong row; nothing of it was imported."""

    def __init__(self, message: str, problems: list[RowProblem]) -> None:
        super().__init__(message)
        self.problems = problems


class PlaybookNotFound(EngineError):
    """No playbook has the given id or name."""


class PlaybookExists(EngineError):
    """Another playbook already has that name."""


class InvalidPlaybook(EngineError):
    """A playbook or one of its tasks is malformed (in a command or an import file)."""


class PlaybookNotLoadable(EngineError):
    """The playbook cannot be loaded onto a card: inactive, archived or without tasks."""


class PlaybookAlreadyLoaded(EngineError):
    """The card already has an open load of the same playbook."""


class TaskNotFound(EngineError):
    """No task has the given id."""


class TaskNotOpen(EngineError):
    """Only open tasks can be completed or cancelled."""


class InvalidTaskStatus(EngineError):
    """A task status that does not exist was asked for."""


class RuleNotFound(EngineError):
    """No rule has the given id or name."""


class RuleExists(EngineError):
    """Another rule already has that name."""


class InvalidRule(EngineError):
    """A rule that cannot be saved: its cadence, conditions or actions are wrong.

    ``problems`` holds one line per wrong part, each naming the field or action.
    """

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class RuleNotDue(EngineError):
    """A scheduled run was asked for a rule another scheduler already claimed."""


class EmailTemplateNotFound(EngineError):
    """No admin-written email template has the given name."""


class EmailTemplateExists(EngineError):
    """Another email template already has that name."""


class EmailTemplateInUse(EngineError):
    """The template is used by a rule's email action and cannot be removed."""


class EmailTemplateRefused(EngineError):
    """A template that references an unknown variable or tries to leave the sandbox.

    ``part`` is subject, text or html; ``line`` counts from 1 within that part.
    """

    def __init__(self, message: str, *, part: str, line: int | None, name: str | None) -> None:
        super().__init__(message)
        self.part = part
        self.line = line
        self.name = name


class EmailRenderError(EngineError):
    """A stored template could not be rendered for one customer (an undefined value).

    ``name`` is what the sandbox refused (an operator, method or filter), when known.
    """

    def __init__(
        self, message: str, *, part: str, line: int | None, name: str | None = None
    ) -> None:
        super().__init__(message)
        self.part = part
        self.line = line
        self.name = name
