"""Customer cards: the field vocabulary, custom fields, CRUD, and CSV import and export.

``CUSTOMER_FIELDS`` is the published vocabulary of a card (key, kind, pt-BR and
English labels, the CSV headers it answers to); rules, the console and the CSV
import all read it. ``customer_fields(session)`` adds the admin-defined custom
fields. Values are checked by kind in one place (``coerce_value``), so a card
holds the same things whichever door they came through.

CSV files, as ``import_customers`` reads them and ``export_customers`` writes them:

- encoding UTF-8 (with or without BOM) or Latin-1/Windows-1252, detected;
  separator ``;`` or ``,``, whichever the header line uses more;
- one header line; names in Portuguese or English, any case, accents optional:
  nome/name, codigo/code, segmento/segment, area, responsavel/owner (the email of
  an active Agente), contato/contact_name, email_contato/contact_email,
  estagio/stage, saude/health, nps, mrr, renovacao/renewal_date, and the key or
  label of each custom field; an unknown column rejects the file;
- dates ``dd/mm/aaaa`` or ``aaaa-mm-dd``; numbers ``1.234,56`` or ``1234.56``;
  yes/no as sim/não; choices as one of the field's options;
- rows are matched to cards by code: new codes create cards (``nome`` needed),
  known ones are updated. A column left out keeps the card's value; an empty
  cell clears it.

Import is all or nothing: every row is checked first, and one wrong cell means
nothing is written and every problem is reported with its line number (the
header is line 1). Export writes ``;``, UTF-8 with BOM (what Excel in Brazil
opens as is) and the first Portuguese header name of each field.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from engine.errors import (
    CustomerImportRejected,
    CustomerNotFound,
    CustomFieldError,
    InvalidCustomerValue,
    RowProblem,
    UserNotFound,
)
from engine.models import CUSTOM_FIELD_KINDS, Customer, CustomField, Playbook, PlaybookLoad, Task
from portaria.db import utcnow
from provisioning.models import User

log = logging.getLogger(__name__)

FIELD_KINDS = ("text", "number", "date", "boolean", "choice", "email", "user")

# Rows per INSERT/UPDATE batch when importing; keeps statements well under driver limits.
_BATCH = 1000


@dataclass(frozen=True)
class CustomerField:
    """One field of a customer card, as rules, forms and the CSV import see it.

    ``column`` is the attribute of :class:`Customer` holding the value (``owner_id``
    for the owner, whose value is a user id); ``None`` for a custom field, whose
    value is ``Customer.custom[key]`` (dates there as ISO strings).
    """

    key: str
    kind: str
    label: str
    label_en: str
    column: str | None
    headers: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    required: bool = False
    max_length: int | None = None
    integer: bool = False
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    decimals: int | None = None

    @property
    def custom(self) -> bool:
        return self.column is None


def _builtin(
    key: str, kind: str, label: str, label_en: str, headers: tuple[str, ...], **extra: Any
) -> CustomerField:
    column = "owner_id" if kind == "user" else key
    # The first header is the one export writes; the key itself is always accepted.
    accepted = tuple(dict.fromkeys((*headers, key)))
    return CustomerField(key, kind, label, label_en, column, headers=accepted, **extra)


# The vocabulary of a card. CSV headers are matched after lower-casing and removing
# accents, spaces and punctuation ("Responsável" -> "responsavel").
# fmt: off
CUSTOMER_FIELDS: dict[str, CustomerField] = {
    f.key: f
    for f in (
        _builtin("name", "text", "Nome", "Name", ("nome", "cliente"),
                 required=True, max_length=200),
        _builtin("code", "text", "Código", "Code", ("codigo", "cod"),
                 required=True, max_length=60),
        _builtin("segment", "text", "Segmento", "Segment", ("segmento",), max_length=120),
        _builtin("area", "text", "Área", "Area", ("area",), max_length=200),
        _builtin("owner", "user", "Responsável", "Owner", ("responsavel", "dono")),
        _builtin("contact_name", "text", "Contato", "Contact",
                 ("contato", "nome_contato", "nome_do_contato", "contact"), max_length=200),
        _builtin("contact_email", "email", "E-mail do contato", "Contact email",
                 ("email_contato", "email_do_contato", "e_mail_contato", "e_mail_do_contato",
                  "email", "e_mail")),
        _builtin("stage", "text", "Estágio", "Stage", ("estagio", "etapa", "fase"),
                 max_length=60),
        _builtin("health_score", "number", "Saúde", "Health score", ("saude", "health"),
                 integer=True, minimum=Decimal(0), maximum=Decimal(100)),
        _builtin("nps", "number", "NPS", "NPS", ("nps",),
                 integer=True, minimum=Decimal(-100), maximum=Decimal(100)),
        _builtin("mrr", "number", "MRR", "MRR", ("mrr", "receita_mensal"),
                 minimum=Decimal(0), maximum=Decimal("999999999999.99"), decimals=2),
        _builtin("renewal_date", "date", "Renovação", "Renewal date",
                 ("renovacao", "data_renovacao", "data_de_renovacao", "renewal")),
    )
}

# Names people give the kinds of custom fields, normalised, to the stored kind.
CUSTOM_KIND_NAMES = {
    "text": "text", "texto": "text",
    "number": "number", "numero": "number",
    "date": "date", "data": "date",
    "boolean": "boolean", "booleano": "boolean", "sim_nao": "boolean", "bool": "boolean",
    "choice": "choice", "escolha": "choice", "opcoes": "choice", "lista": "choice",
}
# fmt: on

_TRUE = frozenset({"sim", "s", "yes", "y", "true", "verdadeiro", "v", "1", "x"})
_FALSE = frozenset({"nao", "n", "no", "false", "falso", "f", "0"})
_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>.]+$")
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,59}$")
_BR_DATE = re.compile(r"^(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<y>\d{4})$")
_ISO_DATE = re.compile(r"^(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_GROUPED = re.compile(r"^[+-]?\d{1,3}(?:[.,]\d{3})+$")
# A cell a spreadsheet reads as a number, not a formula: -20, +5, -1.234,50.
_NUMBER_CELL = re.compile(r"^[+-]?\d+(?:[.,]\d+)*$")
# First characters that make Excel or LibreOffice read a cell as a formula (OWASP
# CSV injection); export puts a ' before such text so it stays text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def normalise_name(text: str) -> str:
    """Lower case, no accents, words joined by ``_``: how headers and kinds are compared."""
    decomposed = unicodedata.normalize("NFKD", text.strip().lower())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]+", "_", plain).strip("_")


def custom_field_spec(row: CustomField) -> CustomerField:
    return CustomerField(
        key=row.key,
        kind=row.kind,
        label=row.label,
        label_en=row.label,
        column=None,
        headers=tuple(dict.fromkeys((row.key, normalise_name(row.label)))),
        choices=tuple(row.choices or ()),
    )


def customer_fields(session: Session) -> list[CustomerField]:
    """The built-in fields followed by the custom ones, in definition order."""
    custom = session.scalars(select(CustomField).order_by(CustomField.id))
    return [*CUSTOMER_FIELDS.values(), *(custom_field_spec(row) for row in custom)]


# ---------------------------------------------------------------------------
# Values by kind


@dataclass(frozen=True)
class Owner:
    """What the owner check needs of a user, loaded once for a whole import."""

    id: int
    email: str
    role: str
    active: bool


def owners_by_email(session: Session) -> dict[str, Owner]:
    """Every user by lower-cased email; one query, so imports never ask per row."""
    rows = session.execute(select(User.id, User.email, User.role, User.active))
    return {
        email.lower(): Owner(id_, email.lower(), role, active) for id_, email, role, active in rows
    }


def parse_date(text: str) -> date:
    """``dd/mm/aaaa`` (Brazilian) or ``aaaa-mm-dd`` (ISO)."""
    # A regex and date() instead of strptime: imports parse one per row, 200,000 rows.
    match = _BR_DATE.match(text.strip()) or _ISO_DATE.match(text.strip())
    if match is not None:
        try:
            return date(int(match["y"]), int(match["m"]), int(match["d"]))
        except ValueError:
            pass
    raise InvalidCustomerValue(f"data inválida (bad date) {text!r}: use dd/mm/aaaa ou aaaa-mm-dd")


def parse_number(text: str) -> Decimal:
    """A number written the Brazilian or the English way.

    ``1.234,56`` and ``1,234.56``: the last separator is the decimal one. A lone
    separator is decimal (``1234,5`` and ``1234.5``); repeated ones group thousands
    (``1.234.567``). ``R$`` and spaces are ignored.
    """
    cleaned = re.sub(r"\s", "", text.replace("R$", ""))
    if "," in cleaned and "." in cleaned:
        decimal_mark = "," if cleaned.rfind(",") > cleaned.rfind(".") else "."
        grouping = "." if decimal_mark == "," else ","
        cleaned = cleaned.replace(grouping, "").replace(decimal_mark, ".")
    elif cleaned.count(",") > 1 or cleaned.count(".") > 1:
        if not _GROUPED.match(cleaned):
            raise InvalidCustomerValue(f"número inválido (bad number): {text!r}")
        cleaned = cleaned.replace(",", "").replace(".", "")
    else:
        cleaned = cleaned.replace(",", ".")
    try:
        number = Decimal(cleaned)
    except InvalidOperation:
        raise InvalidCustomerValue(f"número inválido (bad number): {text!r}") from None
    if not number.is_finite():
        raise InvalidCustomerValue(f"número inválido (bad number): {text!r}")
    return number


def parse_boolean(text: str) -> bool:
    word = normalise_name(text)
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise InvalidCustomerValue(f"valor inválido (bad yes/no) {text!r}: use sim ou não")


def coerce_value(
    spec: CustomerField, value: Any, owners: Mapping[str, Owner] | None = None
) -> Any:
    """The value to store for ``spec``, from text or a Python value; ``None`` clears it.

    Owners: the value is an email (looked up in ``owners``) or a user id; the
    result is the user id. Custom dates are stored as ISO text, custom numbers as
    int or float (they live in JSON).
    """
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        if spec.required:
            raise InvalidCustomerValue(f"{spec.label} obrigatório (required)")
        return None
    kind = spec.kind
    if kind == "text":
        text = str(value)
        if spec.max_length and len(text) > spec.max_length:
            raise InvalidCustomerValue(
                f"{spec.label} longo demais (too long): {len(text)} > {spec.max_length} caracteres"
            )
        return text
    if kind == "email":
        email = str(value).lower()
        if not _EMAIL.match(email) or len(email) > 320:
            raise InvalidCustomerValue(f"e-mail inválido (bad email): {value!r}")
        return email
    if kind == "date":
        day = value if isinstance(value, date) else parse_date(str(value))
        if isinstance(day, datetime):
            day = day.date()
        return day.isoformat() if spec.custom else day
    if kind == "boolean":
        return value if isinstance(value, bool) else parse_boolean(str(value))
    if kind == "choice":
        wanted = normalise_name(str(value))
        for choice in spec.choices:
            if normalise_name(choice) == wanted:
                return choice
        raise InvalidCustomerValue(
            f"opção inválida (bad choice) {value!r}: use {', '.join(spec.choices)}"
        )
    if kind == "number":
        return _coerce_number(spec, value)
    if kind == "user":
        return _coerce_owner(value, owners)
    raise InvalidCustomerValue(f"tipo de campo desconhecido (unknown field kind): {kind}")


def _coerce_number(spec: CustomerField, value: Any) -> Any:
    if isinstance(value, bool):
        raise InvalidCustomerValue(f"número inválido (bad number): {value!r}")
    if isinstance(value, str):
        if spec.integer and not _INTEGER.match(value):
            raise InvalidCustomerValue(f"número inteiro inválido (bad whole number): {value!r}")
        number = parse_number(value)
    else:
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise InvalidCustomerValue(f"número inválido (bad number): {value!r}") from None
        if not number.is_finite():
            raise InvalidCustomerValue(f"número inválido (bad number): {value!r}")
    if spec.integer and number != number.to_integral_value():
        raise InvalidCustomerValue(f"número inteiro inválido (bad whole number): {value!r}")
    exponent = number.as_tuple().exponent
    if spec.decimals is not None and isinstance(exponent, int) and -exponent > spec.decimals:
        raise InvalidCustomerValue(
            f"{spec.label} com mais de {spec.decimals} casas decimais "
            f"(too many decimals): {value!r}"
        )
    if spec.minimum is not None and number < spec.minimum:
        raise InvalidCustomerValue(f"{spec.label} abaixo de {spec.minimum} (too small): {value}")
    if spec.maximum is not None and number > spec.maximum:
        raise InvalidCustomerValue(f"{spec.label} acima de {spec.maximum} (too large): {value}")
    if spec.integer:
        return int(number)
    if spec.custom:
        return int(number) if number == number.to_integral_value() else float(number)
    return number.quantize(Decimal(1).scaleb(-spec.decimals)) if spec.decimals else number


def _coerce_owner(value: Any, owners: Mapping[str, Owner] | None) -> int:
    if owners is None:
        raise InvalidCustomerValue("responsável sem diretório de usuários (no users given)")
    if isinstance(value, int):
        found = next((o for o in owners.values() if o.id == value), None)
    else:
        found = owners.get(str(value).lower())
    if found is None:
        raise InvalidCustomerValue(f"responsável não encontrado (owner not found): {value}")
    if found.role != "agente":
        raise InvalidCustomerValue(
            f"responsável não é Agente (owner is not an Agente): {found.email} é {found.role}"
        )
    if not found.active:
        raise InvalidCustomerValue(f"responsável inativo (owner inactive): {found.email}")
    return found.id


def display_value(spec: CustomerField, value: Any, owner_emails: Mapping[int, str]) -> str:
    """A stored value as a person (and the CSV import) reads it: dd/mm/aaaa, 1234,50, sim."""
    if value is None or value == "":
        return ""
    if spec.kind == "user":
        return owner_emails.get(value, str(value))
    if spec.kind == "date":
        day = date.fromisoformat(value) if isinstance(value, str) else value
        return day.strftime("%d/%m/%Y")
    if spec.kind == "boolean":
        return "sim" if value else "não"
    if spec.kind == "number":
        return str(value).replace(".", ",")
    return str(value)


# ---------------------------------------------------------------------------
# Custom fields


def define_custom_field(
    session: Session, key: str, label: str, kind: str, choices: Sequence[str] = ()
) -> CustomField:
    """Add a field to every card. ``kind`` in English or Portuguese (texto, número, data...)."""
    key = key.strip()
    if not _KEY.match(key):
        raise CustomFieldError(
            f"chave inválida (bad key) {key!r}: letras minúsculas, dígitos e _, "
            "começando por letra (e.g. plano_contratado)"
        )
    taken = {h for spec in CUSTOMER_FIELDS.values() for h in spec.headers}
    if key in taken:
        raise CustomFieldError(f"chave já usada por um campo padrão (key is built in): {key}")
    if session.scalar(select(CustomField.id).where(CustomField.key == key)) is not None:
        raise CustomFieldError(f"campo já existe (field exists): {key}")
    stored_kind = CUSTOM_KIND_NAMES.get(normalise_name(kind))
    if stored_kind is None or stored_kind not in CUSTOM_FIELD_KINDS:
        raise CustomFieldError(
            f"tipo inválido (bad kind) {kind!r}: use texto, número, data, sim_não ou escolha"
        )
    options = [c.strip() for c in choices if c.strip()]
    if stored_kind == "choice" and not options:
        raise CustomFieldError(f"campo de escolha sem opções (choice field needs choices): {key}")
    if stored_kind != "choice" and options:
        raise CustomFieldError(
            f"opções só valem para campos de escolha (choices need kind choice): {key}"
        )
    if not label.strip():
        raise CustomFieldError(f"rótulo vazio (empty label): {key}")
    row = CustomField(key=key, label=label.strip(), kind=stored_kind, choices=options)
    session.add(row)
    session.flush()
    log.info("custom field %s defined as %s", key, stored_kind)
    return row


def list_custom_fields(session: Session) -> list[CustomField]:
    return list(session.scalars(select(CustomField).order_by(CustomField.id)))


# ---------------------------------------------------------------------------
# Cards


def get_customer(session: Session, code: str) -> Customer:
    customer = session.scalar(select(Customer).where(Customer.code == code.strip()))
    if customer is None:
        raise CustomerNotFound(f"Cliente não encontrado (customer not found): {code}")
    return customer


def _spec_for(key: str, specs: Mapping[str, CustomerField]) -> CustomerField:
    spec = specs.get(key)
    if spec is None:
        raise InvalidCustomerValue(f"campo desconhecido (unknown field): {key}")
    return spec


def _apply(
    session: Session, customer: Customer, values: Mapping[str, Any], *, creating: bool
) -> None:
    specs = {spec.key: spec for spec in customer_fields(session)}
    owners = owners_by_email(session) if "owner" in values else None
    custom = dict(customer.custom or {})
    for key, raw in values.items():
        spec = _spec_for(key, specs)
        try:
            value = coerce_value(spec, raw, owners)
        except InvalidCustomerValue as exc:
            raise InvalidCustomerValue(f"{spec.label}: {exc}") from None
        if spec.custom:
            if value is None:
                custom.pop(key, None)
            else:
                custom[key] = value
        else:
            setattr(customer, spec.column or key, value)
    customer.custom = custom
    if creating and not customer.name:
        raise InvalidCustomerValue("Nome obrigatório (name required)")


def create_customer(session: Session, values: Mapping[str, Any]) -> Customer:
    """A new card from field keys to values (text or Python values); ``code`` is unique."""
    code = str(values.get("code") or "").strip()
    if not code:
        raise InvalidCustomerValue("Código obrigatório (code required)")
    if session.scalar(select(Customer.id).where(Customer.code == code)) is not None:
        raise InvalidCustomerValue(f"código já existe (code exists): {code}")
    customer = Customer(code=code, name="", custom={})
    _apply(session, customer, values, creating=True)
    session.add(customer)
    session.flush()
    log.info("customer %s created (%s)", customer.id, code)
    return customer


def update_customer(session: Session, code: str, values: Mapping[str, Any]) -> Customer:
    """Change some fields of a card; a ``None`` or empty value clears a field."""
    customer = get_customer(session, code)
    new_code = values.get("code")
    if new_code is not None and str(new_code).strip() != customer.code:
        taken = session.scalar(select(Customer.id).where(Customer.code == str(new_code).strip()))
        if taken is not None:
            raise InvalidCustomerValue(f"código já existe (code exists): {new_code}")
    _apply(session, customer, values, creating=False)
    session.flush()
    log.info("customer %s updated: %s", customer.id, ", ".join(sorted(values)))
    return customer


def list_customers(
    session: Session,
    *,
    owner_email: str | None = None,
    segment: str | None = None,
    stage: str | None = None,
    limit: int | None = None,
) -> list[Customer]:
    """Cards by code; filters compare without case. An unknown owner is an error
    (UserNotFound), not an empty list: a typo must not read as "no cards"."""
    query = select(Customer).order_by(Customer.code)
    if owner_email:
        check_user_exists(session, owner_email)
        query = query.join(User, User.id == Customer.owner_id).where(
            func.lower(User.email) == owner_email.strip().lower()
        )
    if segment:
        query = query.where(func.lower(Customer.segment) == segment.strip().lower())
    if stage:
        query = query.where(func.lower(Customer.stage) == stage.strip().lower())
    if limit:
        query = query.limit(limit)
    return list(session.scalars(query))


def check_user_exists(session: Session, email: str) -> None:
    """Raise UserNotFound unless a user has ``email`` (compared without case)."""
    found = session.scalar(
        select(User.id).where(func.lower(User.email) == email.strip().lower()).limit(1)
    )
    if found is None:
        raise UserNotFound(f"Usuário não encontrado (user not found): {email}")


def owner_emails(session: Session, ids: Iterable[int | None] | None = None) -> dict[int, str]:
    """User id to email, for showing owners and assignees."""
    query = select(User.id, User.email)
    if ids is not None:
        wanted = {i for i in ids if i is not None}
        if not wanted:
            return {}
        query = query.where(User.id.in_(wanted))
    return {id_: email for id_, email in session.execute(query)}


@dataclass
class LoadHistory:
    """One playbook load on a card, for the card's history."""

    load: PlaybookLoad
    playbook_name: str
    playbook_status: str
    open_tasks: int
    done_tasks: int
    cancelled_tasks: int


@dataclass
class CustomerCard:
    """Everything ``customers show`` prints about one card."""

    customer: Customer
    fields: list[tuple[CustomerField, str]]
    open_tasks: list[Task]
    history: list[LoadHistory]
    assignee_emails: dict[int, str] = field(default_factory=dict)


def customer_card(session: Session, code: str) -> CustomerCard:
    """The card with its values as text, open tasks by due date and its playbook loads."""
    customer = get_customer(session, code)
    tasks = list(
        session.scalars(
            select(Task)
            .where(Task.customer_id == customer.id, Task.status == "open")
            .order_by(Task.due_date.is_(None), Task.due_date, Task.id)
        )
    )
    emails = owner_emails(session, [customer.owner_id, *(t.assignee_id for t in tasks)])
    fields = []
    for spec in customer_fields(session):
        stored = customer.custom.get(spec.key) if spec.custom else getattr(customer, spec.column)
        fields.append((spec, display_value(spec, stored, emails)))

    counts = (
        select(
            Task.load_id,
            func.count().filter(Task.status == "open").label("open"),
            func.count().filter(Task.status == "done").label("done"),
            func.count().filter(Task.status == "cancelled").label("cancelled"),
        )
        .where(Task.customer_id == customer.id, Task.load_id.is_not(None))
        .group_by(Task.load_id)
        .subquery()
    )
    rows = session.execute(
        select(
            PlaybookLoad,
            Playbook.name,
            Playbook.status,
            counts.c.open,
            counts.c.done,
            counts.c.cancelled,
        )
        .join(Playbook, Playbook.id == PlaybookLoad.playbook_id)
        .outerjoin(counts, counts.c.load_id == PlaybookLoad.id)
        .where(PlaybookLoad.customer_id == customer.id)
        .order_by(PlaybookLoad.loaded_on, PlaybookLoad.id)
    )
    history = [
        LoadHistory(load, name, status, open_ or 0, done or 0, cancelled or 0)
        for load, name, status, open_, done, cancelled in rows
    ]
    return CustomerCard(customer, fields, tasks, history, emails)


# ---------------------------------------------------------------------------
# CSV import and export


@dataclass
class ImportReport:
    """What an import did: rows read, cards created and updated, how the file was read."""

    rows: int = 0
    created: int = 0
    updated: int = 0
    encoding: str = ""
    delimiter: str = ""


# progress(phase, done, total); phase is "validando" then "gravando".
ImportProgress = Callable[[str, int, int], None]


def decode_csv(data: bytes) -> tuple[str, str]:
    """The text and the encoding: UTF-8 (with or without BOM), else Windows-1252/Latin-1.

    Excel in Brazil saves "CSV" as Windows-1252, a superset of Latin-1 for the
    printable range; bytes it leaves undefined fall back to plain Latin-1.
    """
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "latin-1"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def sniff_delimiter(text: str) -> str:
    """``;`` (Excel in Brazil) or ``,``: whichever the header line uses more."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    return ";" if header.count(";") >= header.count(",") and ";" in header else ","


Column = tuple[str, CustomerField | None]


def _map_headers(
    headers: list[str], specs: Sequence[CustomerField]
) -> tuple[list[Column], list[RowProblem]]:
    by_header: dict[str, CustomerField] = {}
    for spec in specs:
        for header in spec.headers:
            by_header.setdefault(header, spec)
    mapped: list[Column] = []
    problems: list[RowProblem] = []
    seen: dict[str, str] = {}
    for header in headers:
        header = header.strip()
        if not header:
            mapped.append((header, None))
            continue
        spec = by_header.get(normalise_name(header))
        if spec is None:
            problems.append(RowProblem(1, header, "coluna desconhecida (unknown column)"))
        elif spec.key in seen:
            problems.append(
                RowProblem(
                    1,
                    header,
                    f"coluna repetida (duplicate column): mesmo campo que {seen[spec.key]}",
                )
            )
            spec = None
        else:
            seen[spec.key] = header
        mapped.append((header, spec))
    if "code" not in seen:
        problems.append(RowProblem(1, "", "falta a coluna codigo (code column missing)"))
    return mapped, problems


@dataclass
class _Row:
    line: int
    code: str
    values: dict[str, Any]


def import_customers(
    session: Session, path: Path | str, *, progress: ImportProgress | None = None
) -> ImportReport:
    """Create or update cards from a CSV file, matched by code; all rows or none.

    Raises :class:`CustomerImportRejected` listing every problem (line 1 is the
    header) when any row is wrong; then nothing is written. A column left out of
    the file leaves that field as it is; an empty cell clears it. The ``'`` export
    puts before text starting like a formula is taken off (:func:`csv_cell_value`).
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise CustomerImportRejected(
            f"não foi possível ler (cannot read) {file}: {exc.strerror}", []
        ) from exc
    text, encoding = decode_csv(data)
    delimiter = sniff_delimiter(text)
    report = ImportReport(encoding=encoding, delimiter=delimiter)

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        headers = next(reader, None)
    except csv.Error as exc:
        problem = RowProblem(1, "", f"CSV malformado (malformed CSV): {exc}")
        raise _rejected(file, [problem]) from None
    if headers is None:
        raise CustomerImportRejected(f"arquivo vazio (empty file): {file}", [])
    specs = customer_fields(session)
    columns, problems = _map_headers(headers, specs)
    if problems:
        raise _rejected(file, problems)

    raw_rows: list[tuple[int, list[str]]] = []
    line = 1
    try:
        for cells in reader:
            start, line = line + 1, reader.line_num
            if any(cell.strip() for cell in cells):
                raw_rows.append((start, cells))
    except csv.Error as exc:
        problem = RowProblem(line + 1, "", f"CSV malformado (malformed CSV): {exc}")
        raise _rejected(file, [problem]) from None
    total = len(raw_rows)
    report.rows = total

    existing = {
        code: (id_, custom or {})
        for code, id_, custom in session.execute(
            select(Customer.code, Customer.id, Customer.custom)
        )
    }
    owners = owners_by_email(session)
    has_name = any(spec is not None and spec.key == "name" for _, spec in columns)
    code_header = next(h for h, spec in columns if spec is not None and spec.key == "code")
    rows: list[_Row] = []
    first_line_of: dict[str, int] = {}
    for index, (start, cells) in enumerate(raw_rows, 1):
        row = _check_row(start, cells, columns, owners, problems)
        if row is not None:
            earlier = first_line_of.get(row.code)
            if earlier is not None:
                problems.append(
                    RowProblem(
                        start,
                        code_header,
                        f"código repetido no arquivo (duplicate code): {row.code}, "
                        f"já na linha {earlier}",
                    )
                )
            else:
                first_line_of[row.code] = start
                if row.code not in existing and not has_name:
                    problems.append(
                        RowProblem(start, "nome", "cliente novo precisa de nome (name required)")
                    )
                rows.append(row)
        if progress and (index % _BATCH == 0 or index == total):
            progress("validando", index, total)
    if problems:
        raise _rejected(file, problems)

    report.created, report.updated = _write_rows(session, rows, existing, progress)
    log.info(
        "customers import %s: %s rows, %s created, %s updated (%s, %r)",
        file.name,
        total,
        report.created,
        report.updated,
        encoding,
        delimiter,
    )
    return report


def _rejected(file: Path, problems: list[RowProblem]) -> CustomerImportRejected:
    lines = len({p.line for p in problems})
    return CustomerImportRejected(
        f"{file.name}: {len(problems)} problema(s) em {lines} linha(s); nada foi importado "
        f"(nothing imported)",
        sorted(problems, key=lambda p: p.line),
    )


def _check_row(
    line: int,
    cells: list[str],
    columns: list[Column],
    owners: Mapping[str, Owner],
    problems: list[RowProblem],
) -> _Row | None:
    if len(cells) > len(columns) and any(c.strip() for c in cells[len(columns) :]):
        problems.append(
            RowProblem(
                line,
                "",
                f"{len(cells)} colunas, o cabeçalho tem {len(columns)} "
                "(more cells than header columns)",
            )
        )
        return None
    values: dict[str, Any] = {}
    ok = True
    for (header, spec), cell in zip(columns, cells, strict=False):
        if spec is None:
            continue
        try:
            values[spec.key] = coerce_value(spec, csv_cell_value(cell), owners)
        except InvalidCustomerValue as exc:
            problems.append(RowProblem(line, header, str(exc)))
            ok = False
    # Cells missing at the end of a short row are empty, like Excel writes them.
    for header, spec in columns[len(cells) :]:
        if spec is not None:
            if spec.required:
                problems.append(RowProblem(line, header, f"{spec.label} obrigatório (required)"))
                ok = False
            else:
                values[spec.key] = None
    if not ok:
        return None
    return _Row(line, values["code"], values)


def _write_rows(
    session: Session,
    rows: list[_Row],
    existing: Mapping[str, tuple[int, dict[str, Any]]],
    progress: ImportProgress | None,
) -> tuple[int, int]:
    now = utcnow()
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for row in rows:
        found = existing.get(row.code)
        custom = dict(found[1]) if found else {}
        record: dict[str, Any] = {"updated_at": now}
        for key, value in row.values.items():
            spec = CUSTOMER_FIELDS.get(key)
            if spec is None:
                if value is None:
                    custom.pop(key, None)
                else:
                    custom[key] = value
            else:
                record[spec.column or key] = value
        record["custom"] = custom
        if found:
            record["id"] = found[0]
            updates.append(record)
        else:
            record["created_at"] = now
            inserts.append(record)

    total = len(rows)
    done = 0
    # Core statements on the table, a batch at a time: one executemany per batch. (The
    # ORM's bulk paths split a batch wherever consecutive rows differ in empty cells.)
    table = Customer.__table__
    for batch in _batches(inserts):
        session.execute(insert(table), _same_keys(batch))
        done += len(batch)
        if progress:
            progress("gravando", done, total)
    for batch in _batches(updates):
        for group in _group_by_keys(batch):
            columns = [key for key in group[0] if key != "id"]
            statement = (
                update(table)
                .where(table.c.id == bindparam("card_id"))
                .values({key: bindparam(f"new_{key}") for key in columns})
            )
            session.execute(
                statement,
                [{"card_id": r["id"], **{f"new_{key}": r[key] for key in columns}} for r in group],
            )
        done += len(batch)
        if progress:
            progress("gravando", done, total)
    session.expire_all()
    return len(inserts), len(updates)


def _batches(records: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(records), _BATCH):
        yield records[start : start + _BATCH]


def _same_keys(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A bulk INSERT needs the same columns in every record; fill the gaps with None.
    keys = set().union(*records)
    return [{key: record.get(key) for key in keys} for record in records]


def _group_by_keys(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    # Every row of one file has the same columns, so this is nearly always one group.
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(frozenset(record), []).append(record)
    return list(groups.values())


def csv_safe_cell(text: str) -> str:
    """A cell as export writes it: a ``'`` before text a spreadsheet would run as a formula.

    Numbers (``-20``) stay as they are. Text that already starts with ``'`` before
    such a character gets one more, so :func:`csv_cell_value` gives it back whole.
    """
    if text.lstrip("'").startswith(FORMULA_STARTS) and not _NUMBER_CELL.match(text):
        return "'" + text
    return text


def csv_cell_value(cell: str) -> str:
    """A cell as import reads it: without the ``'`` :func:`csv_safe_cell` put there."""
    if cell.startswith("'") and cell[1:].lstrip("'").startswith(FORMULA_STARTS):
        return cell[1:]
    return cell


def export_customers(session: Session, path: Path | str) -> int:
    """Write every card to CSV as the import reads it back: ``;``, UTF-8 with BOM, pt-BR.

    Text a spreadsheet would run as a formula (``=HYPERLINK(...)``) is written
    after a ``'`` (:func:`csv_safe_cell`); the import takes it off again.
    """
    specs = customer_fields(session)
    emails = owner_emails(session)
    count = 0
    # The BOM and ";" are what Excel in Brazil needs to open the file as it is.
    with Path(path).open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(spec.headers[0] for spec in specs)
        query = select(Customer).order_by(Customer.code).execution_options(yield_per=_BATCH)
        for customer in session.scalars(query):
            writer.writerow(
                csv_safe_cell(
                    display_value(
                        spec,
                        customer.custom.get(spec.key)
                        if spec.custom
                        else getattr(customer, spec.column or spec.key),
                        emails,
                    )
                )
                for spec in specs
            )
            count += 1
    log.info("customers export %s: %s cards", Path(path).name, count)
    return count
