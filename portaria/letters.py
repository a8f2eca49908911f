"""Letters: the emails Portaria writes, rendered from Jinja templates.

This module owns turning a kind of letter, a language and a context into a
:class:`Letter` (subject, plain text, HTML). Templates live in the installed
``templates`` package, under ``email/<language>/`` as ``KIND.subject.txt``,
``KIND.txt`` and ``KIND.html``. Brazilian Portuguese (``pt-BR``) is the
reference language: a template missing in another language falls back to it.

Much of the context comes from strangers' emails (names, areas, subjects).
It is always passed as data, never as template source, so ``{{ ... }}`` in a
name is printed, not evaluated; HTML templates autoescape it; subjects are
collapsed to one line so nothing in them can start a new header.

Context each kind expects (every key must be present; ``StrictUndefined``
turns a missing one into :class:`LetterContextError`):

``received``, ``approved``
    ``requester_name`` (may be empty), ``original_subject`` (may be empty),
    ``people``: list of mappings with ``name``, ``email``, ``area`` and
    ``access_type`` (``comum``, ``agente`` or ``admin``).
``incomplete``
    as above, and each person also has ``missing``: the field keys that are
    missing (``name``, ``email``, ``area``, ``access_type``). Fields that were
    not found may be ``None``. ``people`` may be empty when nobody could be
    read from the email at all. A person may also have ``problems``: for a
    missing field that was written but cannot be used, its problem record
    (``kind``, and ``value``, ``found``, ``length``, ``limit`` as the kind
    needs; see ``intake.values.Problem``); the letter says what was wrong
    with it instead of calling it missing.
``rejected``
    as ``received``, plus ``reason``: why support did not approve.
``welcome``
    ``user`` (``name``, ``email``, ``area``, ``access_type``),
    ``set_password_url``, ``expires_at`` (an aware datetime, shown in
    America/Sao_Paulo time) and ``console_url`` (where to log in).
``support_notice``
    ``requests``: list of mappings with ``id``, ``name``, ``email``, ``area``,
    ``access_type``, ``flags`` (list of ``existing_user``,
    ``pending_duplicate``, ``admin_access``) and ``requester_email``; and
    ``console_url``.
``mailbox_failing`` (to the admin; see ``intake/health.py``)
    ``mailbox`` (the mailbox's identity), ``error`` (the last poll's error),
    ``advice`` (what to do, already in the letter's language),
    ``failing_since`` (an aware datetime) and ``last_success_at`` (an aware
    datetime, or ``None`` when the mailbox was never read).
``mailbox_recovered``
    ``mailbox``, ``failing_since``, ``recovered_at`` (aware datetimes) and
    ``last_error`` (may be ``None``).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    UndefinedError,
    select_autoescape,
)

from portaria.errors import PortariaError

KINDS = (
    "received",
    "incomplete",
    "approved",
    "welcome",
    "rejected",
    "support_notice",
    "mailbox_failing",
    "mailbox_recovered",
)
DEFAULT_LANGUAGE = "pt-BR"
LOCAL_TIME = ZoneInfo("America/Sao_Paulo")

# Words shown for the canonical access types: (name, what it allows).
ACCESS_LABELS: dict[str, dict[str, tuple[str, str]]] = {
    "pt-BR": {
        "comum": ("Comum", "apenas visualização"),
        "agente": ("Agente", "atua nos clientes sob sua responsabilidade"),
        "admin": ("Admin", "acesso administrativo"),
    },
    "en": {
        "comum": ("Comum", "view only"),
        "agente": ("Agente", "works on the customers in their care"),
        "admin": ("Admin", "administrative access"),
    },
}

# Names of the four fields a request needs, as the requester writes them.
FIELD_LABELS: dict[str, dict[str, str]] = {
    "pt-BR": {"name": "Nome", "email": "E-mail", "area": "Área", "access_type": "Tipo de acesso"},
    "en": {"name": "Name", "email": "Email", "area": "Area", "access_type": "Access type"},
}

# What support must know about a queued request before approving it.
FLAG_LABELS: dict[str, dict[str, str]] = {
    "pt-BR": {
        "existing_user": "já tem conta na plataforma",
        "pending_duplicate": "já há outro pedido pendente para esta pessoa",
        "admin_access": "pede acesso de administrador",
        "sender_outside_policy": "o remetente está fora da política de remetentes; confira "
        "se o pedido é mesmo dele antes de aprovar",
    },
    "en": {
        "existing_user": "already has an account on the platform",
        "pending_duplicate": "another pending request exists for this person",
        "admin_access": "asks for administrator access",
        "sender_outside_policy": "the sender is outside the sender policy; check that the "
        "request is really theirs before approving",
    },
}

# What was wrong with a value the requester wrote, by (field, problem kind).
# {value} is the value as written, {found} the distinct values read in it.
PROBLEM_LABELS: dict[str, dict[tuple[str, str], str]] = {
    "pt-BR": {
        ("email", "invalid"): "E-mail inválido: {value}",
        ("email", "unclear"): "E-mail inválido: {value} (escreva só o endereço, sem outras "
        "palavras)",
        ("email", "several"): "Mais de um e-mail: {found}",
        ("name", "invalid"): "Nome inválido: {value}",
        ("name", "too_long"): "Nome longo demais: {length} caracteres, máximo {limit}",
        ("area", "too_long"): "Área longa demais: {length} caracteres, máximo {limit}",
        ("access_type", "unrecognised"): "Tipo de acesso não reconhecido: {value} (use Comum, "
        "Agente ou Admin)",
        ("access_type", "several"): "Mais de um tipo de acesso: {found}",
    },
    "en": {
        ("email", "invalid"): "Invalid email: {value}",
        ("email", "unclear"): "Invalid email: {value} (write the address alone, without "
        "other words)",
        ("email", "several"): "More than one email: {found}",
        ("name", "invalid"): "Invalid name: {value}",
        ("name", "too_long"): "Name too long: {length} characters, at most {limit}",
        ("area", "too_long"): "Area too long: {length} characters, at most {limit}",
        ("access_type", "unrecognised"): "Access type not recognised: {value} (use Comum, "
        "Agente or Admin)",
        ("access_type", "several"): "More than one access type: {found}",
    },
}
# A problem of a kind the table does not know still names its field.
UNUSABLE = {
    "pt-BR": "{field}: valor que não pode ser usado: {value}",
    "en": "{field}: a value that cannot be used: {value}",
}
# Values quoted back to the requester: strangers' text, so one line and this long at most.
QUOTED_CHARS = 60

NOT_GIVEN = {"pt-BR": "(não informado)", "en": "(not given)"}
LOCAL_TIME_NAME = {"pt-BR": "horário de Brasília", "en": "Brasília time"}

# Prefixes mail clients put before a subject when answering; Outlook in
# Portuguese writes "RES:", others "Re:" or "RE:".
_REPLY_PREFIX = re.compile(r"^\s*(re|res)\s*:", re.IGNORECASE)

# Line and paragraph separators and bidirectional overrides can break or
# disguise a header line as much as CR/LF can.
_LINE_BREAKERS = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class LetterError(PortariaError):
    """A letter cannot be written."""


class UnknownLetterKind(LetterError):
    """No such kind of letter."""


class UnknownLanguage(LetterError):
    """No templates exist for the language asked for."""


class LetterContextError(LetterError):
    """The context lacks something the letter's templates need, or holds a wrong value."""


@dataclass(frozen=True)
class Letter:
    """A rendered letter: a one-line subject, a plain-text body and an HTML body."""

    subject: str
    text: str
    html: str


def single_line(value: object) -> str:
    """The value as one line: control characters become spaces, runs of spaces collapse."""
    if value is None:
        return ""
    chars = [
        " " if unicodedata.category(ch) == "Cc" or ch in _LINE_BREAKERS else ch
        for ch in str(value)
    ]
    return " ".join("".join(chars).split())


def shortened(value: object, limit: int = QUOTED_CHARS) -> str:
    """The value on one line, at most ``limit`` characters: its start, "…" and its end.

    The end is kept because that is where an address's domain is.
    """
    text = single_line(value)
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return text[:head] + "…" + text[len(text) - (limit - head - 1) :]


def describe_problem(field: str, problem: Mapping[str, Any], language: str) -> str:
    """One line saying what was wrong with the value written for ``field``.

    ``problem`` is a record as ``intake.values.Problem.record`` gives it.
    """
    labels = PROBLEM_LABELS.get(language, PROBLEM_LABELS[DEFAULT_LANGUAGE])
    access_labels = ACCESS_LABELS.get(language, ACCESS_LABELS[DEFAULT_LANGUAGE])
    field_labels = FIELD_LABELS.get(language, FIELD_LABELS[DEFAULT_LANGUAGE])
    found = [single_line(item) for item in problem.get("found") or ()]
    if field == "access_type":
        found = [access_labels[item][0] if item in access_labels else item for item in found]
    template = labels.get((field, str(problem.get("kind"))))
    if template is None:
        template = UNUSABLE.get(language, UNUSABLE[DEFAULT_LANGUAGE])
    return template.format(
        field=field_labels.get(field, single_line(field)),
        value=shortened(problem.get("value", "")),
        found=shortened(", ".join(found)),
        length=int(problem.get("length") or 0),
        limit=int(problem.get("limit") or 0),
    )


def template_folder() -> Path:
    """The folder holding the email templates, inside the installed ``templates`` package."""
    return Path(str(files("templates"))) / "email"


def languages() -> tuple[str, ...]:
    """Languages that have email templates, the default first."""
    found = sorted(
        entry.name
        for entry in template_folder().iterdir()
        if entry.is_dir() and not entry.name.startswith(("_", "."))
    )
    return tuple(sorted(found, key=lambda name: name != DEFAULT_LANGUAGE))


def resolve_language(language: str | None) -> str:
    """The template language for a language tag: exact match, then its primary subtag.

    ``pt_br`` and ``pt`` give ``pt-BR``; ``en-US`` gives ``en``; ``None`` gives
    the default. A language with no templates at all raises UnknownLanguage.
    """
    if not language:
        return DEFAULT_LANGUAGE
    wanted = language.strip().replace("_", "-").lower()
    known = languages()
    for name in known:
        if name.lower() == wanted:
            return name
    primary = wanted.split("-", 1)[0]
    for name in known:
        if name.lower().split("-", 1)[0] == primary:
            return name
    raise UnknownLanguage(
        f"no email templates for language {language!r}; available: {', '.join(known)}"
    )


def compose(kind: str, language: str, context: Mapping[str, Any]) -> Letter:
    """Render the letter ``kind`` in ``language`` with ``context`` (see the module docstring)."""
    if kind not in KINDS:
        raise UnknownLetterKind(f"no letter kind {kind!r}; known kinds: {', '.join(KINDS)}")
    language = resolve_language(language)
    environment = _environment(language)
    values = dict(context)

    try:
        subject = _render(environment, language, f"{kind}.subject.txt", values)
        text = _render(environment, language, f"{kind}.txt", values)
        html = _render(environment, language, f"{kind}.html", values)
    except UndefinedError as exc:
        raise LetterContextError(f"letter {kind!r} ({language}): {exc}") from exc

    return Letter(subject=single_line(subject), text=_tidy_text(text), html=html)


def _render(environment: Environment, language: str, name: str, values: dict[str, Any]) -> str:
    candidates = [f"{language}/{name}", f"{DEFAULT_LANGUAGE}/{name}"]
    try:
        template = environment.select_template(candidates)
    except TemplateNotFound as exc:
        raise LetterError(
            f"template {name} is missing from {template_folder()}; reinstall Portaria"
        ) from exc
    return template.render(values)


def _tidy_text(text: str) -> str:
    """Plain text without trailing spaces, runs of blank lines or missing final newline."""
    lines = [line.rstrip() for line in text.splitlines()]
    # Loops in templates are easier to read with a blank line per item; the
    # reader should not see the doubled blank lines that leaves behind.
    kept = [line for i, line in enumerate(lines) if line or (i > 0 and lines[i - 1])]
    return "\n".join(kept).strip("\n") + "\n"


@functools.cache
def _environment(language: str) -> Environment:
    environment = Environment(
        loader=FileSystemLoader(template_folder()),
        # Only the HTML part is markup; escaping the text part would show "&amp;".
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    environment.filters.update(_filters(language))
    return environment


def _filters(language: str) -> dict[str, Callable[..., str]]:
    """Filters whose words depend on the language of the letter."""
    access_labels = ACCESS_LABELS.get(language, ACCESS_LABELS[DEFAULT_LANGUAGE])
    field_labels = FIELD_LABELS.get(language, FIELD_LABELS[DEFAULT_LANGUAGE])
    flag_labels = FLAG_LABELS.get(language, FLAG_LABELS[DEFAULT_LANGUAGE])
    not_given = NOT_GIVEN.get(language, NOT_GIVEN[DEFAULT_LANGUAGE])
    time_name = LOCAL_TIME_NAME.get(language, LOCAL_TIME_NAME[DEFAULT_LANGUAGE])

    def given(value: object) -> str:
        shown = single_line(value)
        return shown or not_given

    def access_name(value: object) -> str:
        key = single_line(value).lower()
        return access_labels[key][0] if key in access_labels else given(value)

    def access(value: object) -> str:
        key = single_line(value).lower()
        if key not in access_labels:
            return given(value)
        name, meaning = access_labels[key]
        return f"{name} ({meaning})"

    def field(value: object) -> str:
        key = single_line(value)
        return field_labels.get(key, key)

    def flag(value: object) -> str:
        key = single_line(value)
        return flag_labels.get(key, key)

    def problem(value: Mapping[str, Any], field_key: str) -> str:
        return describe_problem(field_key, value, language)

    def local_time(value: object) -> str:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise LetterContextError(f"expected an aware datetime, got {value!r}")
        local = value.astimezone(LOCAL_TIME)
        if language == "pt-BR":
            return f"{local:%d/%m/%Y %H:%M} ({time_name})"
        offset = local.strftime("%z")
        return f"{local:%Y-%m-%d %H:%M} ({time_name}, UTC{offset[:3]}:{offset[3:]})"

    def reply(value: object) -> str:
        subject = single_line(value)
        return subject if _REPLY_PREFIX.match(subject) else f"Re: {subject}"

    return {
        "given": given,
        "oneline": single_line,
        "access": access,
        "access_name": access_name,
        "field": field,
        "flag": flag,
        "problem": problem,
        "local_time": local_time,
        "reply": reply,
    }
