"""Admin-written email templates: storing them, checking them, rendering them safely.

Templates (subject, text, optional HTML) live in ``EmailTemplate`` rows and are
written by admins, so they are rendered in Jinja's immutable sandbox with
``StrictUndefined``. Saving (and previewing) a template refuses, with the part,
the line and the name, anything that references an unknown variable or field,
reads an underscore attribute, or uses the ``attr`` filter: the ways out of a
sandbox start there. Every such problem of the three parts is reported at once
(:class:`EmailTemplateProblems`). A trial render with sample values then
catches what the static check cannot see. The HTML part is autoescaped; the
subject is collapsed to one line so it can never start a new header.

The sandbox also bounds sizes (:class:`LimitedSandbox`), so a template cannot
exhaust memory: ``*`` may build at most :data:`MAX_BUILT` characters or items
and integers of at most :data:`MAX_INT_BITS` bits (``**`` too); ``+``, ``~``,
string methods and the ``center``, ``indent``, ``join``, ``replace`` and
``format`` filters at most :data:`MAX_RENDERED` characters; widths in format
strings at most :data:`MAX_BUILT`; and one rendered part at most
:data:`MAX_RENDERED` characters. A constant operation past a limit is refused
at save by the static check, whatever branch it is in.

Variables a template can use (also shown by ``portaria templates vars``):

``customer``
    the card: ``name``, ``code``, ``segment``, ``area``, ``owner`` (the owner's
    email), ``contact_name``, ``contact_email``, ``stage``, ``health_score``,
    ``nps``, ``mrr``, ``renewal_date`` (a date), and ``custom.<key>`` for each
    custom field (undefined when the card has no value for it).
``owner``
    the Agente who owns the card: ``name``, ``email``, ``area``; false when the
    card has no owner (``{% if owner %}``).
``task``
    the card's next open task (earliest due): ``name``, ``kind``, ``due_date``,
    ``status``; false when there is none.
``playbook``
    the playbook the rule loads (its first playbook action): ``name``; false
    when the rule loads none.
``rule``
    the rule sending the email: ``name``.
``today``
    today's date in the rule's time zone.
``unsubscribe_url``
    the one-click link that stops rule emails to this recipient (each recipient
    gets their own). ``unsubscribe`` is the same link under its older name.
    A part (text or HTML) that uses neither gets a short pt-BR/en footer with
    the link, so no rule email goes out without one; write the link yourself
    to choose its words and place.

Filters beyond Jinja's own: ``date_br`` (``31/12/2025``) and ``money_br``
(``R$ 1.234,56``). An empty value prints as nothing, not ``None``, and
``default`` also replaces an empty value (``{{ customer.contact_name|default('cliente') }}``),
not only an undefined one as in plain Jinja.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from types import TracebackType
from typing import Any

from jinja2 import (
    StrictUndefined,
    Template,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    meta,
    nodes,
    pass_eval_context,
)
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import do_center, do_format, do_indent, do_join, do_replace
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from markupsafe import escape
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.customers import CUSTOMER_FIELDS, customer_fields
from engine.errors import (
    EmailRenderError,
    EmailTemplateExists,
    EmailTemplateInUse,
    EmailTemplateNotFound,
    EmailTemplateRefused,
)
from engine.models import Customer, EmailTemplate, Rule, Task
from portaria.letters import single_line
from provisioning.models import User

log = logging.getLogger(__name__)

PARTS = ("subject", "text", "html")
PART_LABELS = {"subject": "assunto (subject)", "text": "texto (text)", "html": "HTML"}

# What each variable offers, for the save check and for `portaria templates vars`.
# Customer fields come from the card vocabulary; custom fields from the database.
VARIABLES: dict[str, tuple[str, dict[str, str]]] = {
    "owner": (
        "Responsável pelo cliente (the card's owner); falso sem responsável",
        {"name": "nome", "email": "e-mail", "area": "área"},
    ),
    "task": (
        "Próxima tarefa aberta do cliente (next open task); falso sem tarefa",
        {
            "name": "nome",
            "kind": "tipo: call, email, other",
            "due_date": "vencimento (data)",
            "status": "situação",
        },
    ),
    "playbook": (
        "Playbook que a regra carrega (the rule's playbook); falso sem playbook",
        {"name": "nome"},
    ),
    "rule": ("Regra que envia o e-mail (the rule)", {"name": "nome"}),
    "today": ("Data de hoje no fuso da regra (today, rule's time zone)", {}),
    "unsubscribe_url": (
        "Link de descadastro deste destinatário (one-click unsubscribe link); "
        "sem ele no modelo, um rodapé com o link é acrescentado",
        {},
    ),
    "unsubscribe": ("O mesmo link, nome antigo (same link, older name)", {}),
}
# Either name in a part means the admin placed the link; else a footer carries it.
UNSUBSCRIBE_NAMES = frozenset({"unsubscribe_url", "unsubscribe"})
REFUSED = "modelo recusado (template refused)"
CUSTOMER_DESCRIPTION = "O cartão do cliente (the customer card)"

# Globals kept from Jinja's defaults: the others (cycler, joiner, lipsum, dict)
# add nothing a template needs and only widen what a template can reach.
_SAFE_GLOBALS = ("range", "namespace")


class EmailTemplateProblems(EmailTemplateRefused):
    """Every problem of a refused template at once; ``part``, ``line``, ``name`` are the first's.

    One problem reads exactly as that problem; several are counted and joined.
    """

    def __init__(self, problems: list[EmailTemplateRefused]) -> None:
        first = problems[0]
        if len(problems) == 1:
            message = str(first)
        else:
            details = "; ".join(problem_detail(p) for p in problems)
            message = f"{REFUSED}, {len(problems)} problemas (problems): {details}"
        super().__init__(message, part=first.part, line=first.line, name=first.name)
        self.problems = list(problems)


def problem_detail(problem: EmailTemplateRefused) -> str:
    """``texto (text), linha 3: ...``: a refusal without its headline."""
    return str(problem).removeprefix(f"{REFUSED}: ")


@dataclass(frozen=True)
class RenderedEmail:
    """One template rendered for one customer: a one-line subject, text and HTML."""

    subject: str
    text: str
    html: str | None


class Record:
    """Values a template reads as ``name.field``; false when ``absent`` (no owner, no task).

    It has no public methods, so a field named like a dict method (``items``,
    ``values``) still reads the field.
    """

    __slots__ = ("_absent", "_path", "_values")

    def __init__(self, path: str, values: Mapping[str, Any], *, absent: str = "") -> None:
        self._path = path
        self._values = dict(values)
        self._absent = absent

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __bool__(self) -> bool:
        return not self._absent

    def __str__(self) -> str:
        return str(self._values.get("name", ""))


class _Undefined(StrictUndefined):
    """StrictUndefined whose message names the full path, e.g. ``customer.custom.plano``."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        owner = self._undefined_obj
        if isinstance(owner, Record):
            path = f"{owner._path}.{self._undefined_name}"
            if owner._absent:
                return f"{path} não está definido (is undefined): {owner._absent}"
            return f"{path} não está definido para este cliente (is undefined)"
        return super()._undefined_message


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def date_br(value: Any) -> str:
    """``31/12/2025`` from a date, a datetime or ISO text; empty stays empty."""
    if value in (None, ""):
        return ""
    if isinstance(value, str):
        value = date.fromisoformat(value[:10])
    if isinstance(value, datetime | date):
        return value.strftime("%d/%m/%Y")
    return str(value)


def money_br(value: Any) -> str:
    """``R$ 1.234,56`` from a number; empty stays empty."""
    if value in (None, ""):
        return ""
    amount = Decimal(str(value)).quantize(Decimal("0.01"))
    grouped = f"{abs(amount):,.2f}".replace(",", "X").replace(".", ",").replace("X", ".")
    return f"{'-' if amount < 0 else ''}R$ {grouped}"


def default_if_empty(value: Any, fallback: Any = "", boolean: bool = False) -> Any:
    """Jinja's ``default``, but an empty card field (None or "") counts as missing too."""
    if isinstance(value, Undefined) or value is None or value == "":
        return fallback
    return fallback if boolean and not value else value


# Size limits, so a template cannot exhaust memory: what one operator (* ** + %) may
# build, the digits an integer may reach, what a string method or filter may build
# at worst, and what one rendered part may hold.
MAX_BUILT = 100_000
MAX_INT_BITS = 10_000  # about 3,000 digits
MAX_RENDERED = 1_000_000

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")


class TooLarge(SecurityError):
    """A template operation refused for the size of what it would build; ``name`` is
    the operator, method or filter."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(
            f"{name!r} construiria um valor grande demais (result too large): {detail}"
        )
        self.name = name


def _over(size: int, limit: int) -> str:
    return f"{size} > {limit} caracteres ou itens (characters or items)"


def _whole(value: Any) -> int | None:
    return int(value) if isinstance(value, int) else None


def _weight(value: Any) -> int:
    """Characters and items in a string, list or tuple (nested ones counted in); else 0."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple):
        return len(value) + sum(_weight(item) for item in value)
    return 0


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse (TooLarge) ``left operator right`` when its result would be too large."""
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            count = _whole(times)
            if isinstance(sequence, str | list | tuple) and count is not None:
                size = _weight(sequence) * count
                if size > MAX_BUILT:
                    raise TooLarge(operator, _over(size, MAX_BUILT))
    a, b = _whole(left), _whole(right)
    if a is not None and b is not None:
        if operator == "*":
            bits = a.bit_length() + b.bit_length()
        elif operator == "**" and abs(a) > 1 and b > 0:
            bits = a.bit_length() * b
        else:
            bits = 0
        if bits > MAX_INT_BITS:
            raise TooLarge(operator, f"inteiro com mais de {MAX_INT_BITS} bits (integer)")
    if operator == "+" and isinstance(left, str | list | tuple):
        _check_joined(operator, _weight(left) + _weight(right))
    if operator == "%" and isinstance(left, str):
        values = right if isinstance(right, tuple) else (right,)
        _check_widths(operator, left, _PERCENT_SPEC.findall(left), values)


def _check_joined(name: str, size: int) -> None:
    """Refuse a concatenation (``+``, ``~``) past :data:`MAX_RENDERED`: one doubling in
    a loop builds at most twice that before it is refused."""
    if size > MAX_RENDERED:
        raise TooLarge(name, _over(size, MAX_RENDERED))


def _check_widths(name: str, text: str, specs: list[Any], values: tuple[Any, ...]) -> None:
    """Refuse a format string whose widths or precisions exceed :data:`MAX_BUILT`."""
    for spec in specs:
        for part in spec if isinstance(spec, tuple) else (spec,):
            numbers = [int(n) for n in re.findall(r"\d+", part)]
            if "*" in part:
                numbers += [v for v in values if isinstance(v, int)]
            if any(n > MAX_BUILT for n in numbers):
                raise TooLarge(name, f"largura acima de {MAX_BUILT} (width or precision)")


def check_call(name: str, subject: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse a string method or filter whose result could exceed :data:`MAX_RENDERED`.

    The bound is the worst case: the subject's size times what the arguments may put
    in, where a whole number counts as its value (a width).
    """
    values = (*args, *kwargs.values())
    added = sum(max(v, 0) if isinstance(v, int) else _weight(v) for v in values)
    if (_weight(subject) + 1) * (1 + added) > MAX_RENDERED:
        raise TooLarge(name, f"pode passar de {MAX_RENDERED} caracteres (may exceed)")
    if name in ("format", "format_map") and isinstance(subject, str):
        _check_widths(name, subject, _FORMAT_SPEC.findall(subject), values)


class _CheckedConcat(CodeGenerator):
    """Compiles ``a ~ b`` so that the sandbox checks the size of the result."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with size limits on operators and string methods."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CheckedConcat

    def checked_concat(self, value: str) -> str:
        _check_joined("~", len(value))
        return value

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text, name = value.__self__, value.__name__

        def checked(*args: Any, **kwargs: Any) -> str:
            check_call(name, text, args, kwargs)
            return wrapped(*args, **kwargs)

        return checked

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            check_call(getattr(obj, "__name__", "?"), owner, args, kwargs)
        return super().call(context, obj, *args, **kwargs)


def _center(value: Any, width: int = 80) -> str:
    check_call("center", value, (width,), {})
    return do_center(value, width)


def _indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    lines = str(value).count("\n") + 1
    check_call("indent", value, (width if isinstance(width, str) else width * lines,), {})
    return do_indent(value, width, first, blank)


@pass_eval_context
def _join(eval_ctx: EvalContext, value: Any, d: str = "", attribute: Any = None) -> str:
    items = list(value)
    if _weight(items) + len(str(d)) * len(items) > MAX_RENDERED:
        raise TooLarge("join", f"pode passar de {MAX_RENDERED} caracteres (may exceed)")
    return do_join(eval_ctx, items, d, attribute)


@pass_eval_context
def _replace(eval_ctx: EvalContext, s: Any, old: Any, new: Any, count: Any = None) -> str:
    check_call("replace", s, (new,), {})
    return do_replace(eval_ctx, s, old, new, count)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    check_call("format", value, args, kwargs)
    if isinstance(value, str):
        _check_widths("format", value, _PERCENT_SPEC.findall(value), args)
    return do_format(value, *args, **kwargs)


def _environment(*, html: bool) -> LimitedSandbox:
    environment = LimitedSandbox(
        undefined=_Undefined,
        autoescape=html,
        finalize=_finalize,
        # No trim_blocks: an admin writing "{% if owner %}...{% endif %}" at the
        # end of a line expects the line break after it to stay.
        keep_trailing_newline=True,
        auto_reload=False,
    )
    environment.globals = {k: environment.globals[k] for k in _SAFE_GLOBALS}
    environment.filters.update(
        date_br=date_br, money_br=money_br, default=default_if_empty, d=default_if_empty
    )
    environment.filters.update(
        center=_center, indent=_indent, join=_join, replace=_replace, format=_format
    )
    return environment


_TEXT = _environment(html=False)
_HTML = _environment(html=True)


def _environment_for(part: str) -> LimitedSandbox:
    return _HTML if part == "html" else _TEXT


# Checking --------------------------------------------------------------------------------


def allowed_fields(session: Session) -> dict[str, set[str]]:
    """Attributes each variable offers; ``customer.custom`` under the key ``custom``."""
    fields = {name: set(attrs) for name, (_, attrs) in VARIABLES.items()}
    fields["customer"] = {key for key in CUSTOMER_FIELDS} | {"custom"}
    fields["custom"] = {spec.key for spec in customer_fields(session) if spec.custom}
    return fields


def check_template(
    session: Session, *, subject: str, body_text: str, body_html: str | None
) -> None:
    """Refuse (EmailTemplateProblems) a template that cannot be rendered safely.

    Every part is checked, and every problem found is reported. A part with a
    static problem is not trial-rendered: its sample render would only fail
    again on the same name, and unsafe code is not run even in the sandbox.
    """
    fields = allowed_fields(session)
    parts = {"subject": subject, "text": body_text, "html": body_html}
    problems: list[EmailTemplateRefused] = []
    clean: list[str] = []
    for part, source in parts.items():
        if source is None:
            continue
        found = _part_problems(part, source, fields)
        problems.extend(found)
        if not found:
            clean.append(part)
    sample = sample_context(session)
    for part in clean:
        try:
            _render_part(part, parts[part] or "", sample, refusing=True)
        except EmailTemplateRefused as exc:
            problems.append(exc)
    if problems:
        # Part by part, as a person reads the template; sort is stable, lines stay in order.
        problems.sort(key=lambda problem: PARTS.index(problem.part))
        raise EmailTemplateProblems(problems)


def _part_problems(
    part: str, source: str, fields: dict[str, set[str]]
) -> list[EmailTemplateRefused]:
    """What the static check finds in one part, in line order."""
    try:
        tree = _environment_for(part).parse(source)
    except TemplateSyntaxError as exc:
        reason = f"erro de sintaxe (syntax error): {exc.message}"
        return [_refused(part, exc.lineno, None, reason)]
    # (line, kind, problem): kind keeps sandbox problems first within a line.
    found: list[tuple[int, int, EmailTemplateRefused]] = []

    innermost: dict[int, tuple[int, str]] = {}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name = _accessed_name(node)
        if isinstance(node, nodes.Filter) and node.name == "attr":
            name = "attr"
        elif name is None or not name.startswith("_"):
            continue
        # The walk meets ''.__class__.__mro__ from the outside in; a person reads
        # it from the inside out, so report the innermost access of each line.
        candidate = (_depth(node), name)
        innermost[node.lineno] = min(innermost.get(node.lineno, candidate), candidate)
    for line, (_, name) in innermost.items():
        reason = (
            "filtro attr não é permitido (not allowed)"
            if name == "attr"
            else f"acesso proibido pelo sandbox (sandbox): {name!r}"
        )
        found.append((line, 0, _refused(part, line, name, reason)))

    context = nodes.EvalContext(_environment_for(part))
    for node in tree.find_all((nodes.Mul, nodes.Pow, nodes.Add, nodes.Mod)):
        # Constant operands only: an intercepted operator inside them is never folded.
        try:
            left, right = node.left.as_const(context), node.right.as_const(context)
            check_binop(node.operator, left, right)
        except nodes.Impossible:
            continue
        except TooLarge as exc:
            reason = f"bloqueado pelo sandbox (sandbox): {exc}"
            found.append((node.lineno, 0, _refused(part, node.lineno, exc.name, reason)))

    known = set(fields) - {"custom"} | set(_SAFE_GLOBALS)
    unknown = meta.find_undeclared_variables(tree) - known
    seen: set[tuple[int, str]] = set()
    for node in tree.find_all(nodes.Name):
        if node.name not in unknown or node.ctx != "load" or (node.lineno, node.name) in seen:
            continue
        seen.add((node.lineno, node.name))
        reason = f"variável desconhecida (unknown variable): {node.name!r}"
        found.append((node.lineno, 1, _refused(part, node.lineno, node.name, reason)))

    declared = _declared_names(tree)
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        path = _static_path(node)
        if path is None or path[0] in declared:
            continue
        variable, attribute = path[0], path[1]
        if variable not in fields or variable == "today":
            continue
        if attribute not in fields[variable]:
            name = f"{variable}.{attribute}"
            reason = f"campo desconhecido (unknown field): {name}"
        elif (
            path[:2] == ("customer", "custom")
            and len(path) > 2
            and path[2] not in fields["custom"]
        ):
            name = f"customer.custom.{path[2]}"
            reason = f"campo personalizado desconhecido (unknown custom field): {path[2]}"
        else:
            continue
        if (node.lineno, name) not in seen:
            seen.add((node.lineno, name))
            found.append((node.lineno, 2, _refused(part, node.lineno, name, reason)))
    return [problem for _, _, problem in sorted(found, key=lambda f: (f[0], f[1]))]


def _depth(node: nodes.Node) -> int:
    depth = 0
    while isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Filter) and node.node is not None:
        node = node.node
        depth += 1
    return depth


def _accessed_name(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        value = node.arg.value
        return value if isinstance(value, str) else None
    return None


def _static_path(node: nodes.Node) -> tuple[str, ...] | None:
    """``customer.custom.plano`` as a tuple, when the whole chain is written out."""
    parts: list[str] = []
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        name = _accessed_name(node)
        if name is None:
            return None
        parts.append(name)
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    parts.append(node.name)
    return tuple(reversed(parts))


def _declared_names(tree: nodes.Template) -> set[str]:
    """Names the template assigns itself ({% set %}, loop targets): not ours to check."""
    return {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}


def _refused(part: str, line: int | None, name: str | None, reason: str) -> EmailTemplateRefused:
    where = PART_LABELS[part] + (f", linha {line}" if line else "")
    return EmailTemplateRefused(f"{REFUSED}: {where}: {reason}", part=part, line=line, name=name)


def _template_line(traceback: TracebackType | None) -> int | None:
    """The template line an error happened on: Jinja rewrites its frames to point there."""
    line = None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == "<template>":
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


@lru_cache(maxsize=64)
def _compiled(part: str, source: str) -> Template:
    # A run renders one template for thousands of recipients: compile it once.
    return _environment_for(part).from_string(source)


@lru_cache(maxsize=64)
def _places_unsubscribe(part: str, source: str) -> bool:
    """Whether the part itself shows the unsubscribe link (then it gets no footer)."""
    try:
        tree = _environment_for(part).parse(source)
    except TemplateSyntaxError:
        return False
    return bool(meta.find_undeclared_variables(tree) & UNSUBSCRIBE_NAMES)


def _render_part(part: str, source: str, context: Mapping[str, Any], *, refusing: bool) -> str:
    try:
        return _bounded_render(_compiled(part, source), context)
    except SecurityError as exc:
        line = _template_line(exc.__traceback__)
        name = exc.name if isinstance(exc, TooLarge) else None
        reason = f"bloqueado pelo sandbox (sandbox): {exc}"
        if refusing:
            raise _refused(part, line, name, reason) from None
        where = PART_LABELS[part] + (f", linha {line}" if line else "")
        raise EmailRenderError(f"{where}: {reason}", part=part, line=line, name=name) from None
    except UndefinedError as exc:
        line = _template_line(exc.__traceback__)
        if refusing:
            raise _refused(part, line, None, str(exc)) from None
        where = PART_LABELS[part] + (f", linha {line}" if line else "")
        raise EmailRenderError(f"{where}: {exc}", part=part, line=line) from None
    except Exception as exc:  # an admin's template may fail in any way Jinja allows
        line = _template_line(exc.__traceback__)
        reason = f"{type(exc).__name__}: {exc}"
        if refusing:
            raise _refused(part, line, None, reason) from None
        where = PART_LABELS[part] + (f", linha {line}" if line else "")
        raise EmailRenderError(f"{where}: {reason}", part=part, line=line) from None


def _bounded_render(template: Template, context: Mapping[str, Any]) -> str:
    """The rendered part, refused (TooLarge) once it passes :data:`MAX_RENDERED` characters."""
    chunks: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > MAX_RENDERED:
            raise TooLarge("render", f"mais de {MAX_RENDERED} caracteres (too many characters)")
        chunks.append(chunk)
    return "".join(chunks)


# Rendering ------------------------------------------------------------------------------


def render_email(template: EmailTemplate, context: Mapping[str, Any]) -> RenderedEmail:
    """The template rendered with ``context``; EmailRenderError names the part and line.

    With an ``unsubscribe_url`` in the context, a text or HTML part that does
    not show the link itself gets the unsubscribe footer.
    """
    link = str(context.get("unsubscribe_url") or "")
    subject = single_line(_render_part("subject", template.subject, context, refusing=False))
    text = _render_part("text", template.body_text, context, refusing=False)
    if link and not _places_unsubscribe("text", template.body_text):
        text = text_with_footer(text, link)
    html = None
    if template.body_html:
        html = _render_part("html", template.body_html, context, refusing=False)
        if link and not _places_unsubscribe("html", template.body_html):
            html = html_with_footer(html, link)
    return RenderedEmail(subject=subject, text=text, html=html)


def text_with_footer(text: str, link: str) -> str:
    """The text part ending with the unsubscribe link, after a signature separator."""
    body = text.rstrip("\n")
    return f"{body}\n\n-- \nPara não receber mais estes e-mails (to stop these emails):\n{link}\n"


_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def html_with_footer(html: str, link: str) -> str:
    """The HTML part with an escaped unsubscribe paragraph, before ``</body>`` if any."""
    footer = (
        '<p style="font-size:small;color:#666">Para não receber mais estes e-mails '
        f'(to stop these emails): <a href="{escape(link)}">descadastrar (unsubscribe)</a></p>'
    )
    ends = list(_BODY_END.finditer(html))
    if not ends:
        return f"{html.rstrip()}\n{footer}\n"
    cut = ends[-1].start()
    return f"{html[:cut]}{footer}\n{html[cut:]}"


def customer_record(customer: Customer, owner: User | None) -> Record:
    values: dict[str, Any] = {}
    for key, spec in CUSTOMER_FIELDS.items():
        if spec.kind == "user":
            values[key] = owner.email if owner is not None else None
        else:
            values[key] = getattr(customer, spec.column or key)
    values["custom"] = Record("customer.custom", customer.custom or {})
    return Record("customer", values)


def email_context(
    session: Session,
    customer: Customer,
    *,
    today: date,
    rule: Rule | None = None,
    playbook_name: str | None = None,
    unsubscribe_url: str = "",
) -> dict[str, Any]:
    """The variables of one customer's email (see the module docstring).

    ``unsubscribe_url`` belongs to one recipient: a caller mailing several
    addresses replaces it for each (see ``engine.actions.EmailAction``).
    """
    owner = session.get(User, customer.owner_id) if customer.owner_id else None
    task = session.scalar(
        select(Task)
        .where(Task.customer_id == customer.id, Task.status == "open")
        .order_by(Task.due_date.is_(None), Task.due_date, Task.id)
        .limit(1)
    )
    return {
        "customer": customer_record(customer, owner),
        "owner": (
            Record("owner", {"name": owner.name, "email": owner.email, "area": owner.area})
            if owner is not None
            else Record("owner", {}, absent="cliente sem responsável (no owner)")
        ),
        "task": (
            Record(
                "task",
                {
                    "name": task.name,
                    "kind": task.kind,
                    "due_date": task.due_date,
                    "status": task.status,
                },
            )
            if task is not None
            else Record("task", {}, absent="cliente sem tarefa aberta (no open task)")
        ),
        "playbook": (
            Record("playbook", {"name": playbook_name})
            if playbook_name
            else Record("playbook", {}, absent="a regra não carrega playbook (no playbook)")
        ),
        "rule": Record("rule", {"name": rule.name if rule is not None else ""}),
        "today": today,
        "unsubscribe_url": unsubscribe_url,
        "unsubscribe": unsubscribe_url,
    }


SAMPLE_UNSUBSCRIBE_URL = "https://portaria.exemplo.com.br/unsubscribe/EXEMPLO"


def sample_context(session: Session) -> dict[str, Any]:
    """Plausible values for every variable, for the trial render when saving."""
    today = date.today()
    samples = {
        "text": "Exemplo",
        "email": "contato@exemplo.com.br",
        "user": "agente@exemplo.com.br",
        "number": 10,
        "date": today,
        "boolean": True,
    }
    values: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    for spec in customer_fields(session):
        value = spec.choices[0] if spec.choices else samples.get(spec.kind, "Exemplo")
        if spec.custom:
            custom[spec.key] = value.isoformat() if isinstance(value, date) else value
        else:
            values[spec.key] = value
    values["custom"] = Record("customer.custom", custom)
    return {
        "customer": Record("customer", values),
        "owner": Record(
            "owner", {"name": "Ana Agente", "email": "agente@exemplo.com.br", "area": "CS"}
        ),
        "task": Record(
            "task", {"name": "Ligar", "kind": "call", "due_date": today, "status": "open"}
        ),
        "playbook": Record("playbook", {"name": "Onboarding"}),
        "rule": Record("rule", {"name": "Regra de exemplo"}),
        "today": today,
        "unsubscribe_url": SAMPLE_UNSUBSCRIBE_URL,
        "unsubscribe": SAMPLE_UNSUBSCRIBE_URL,
    }


# Storing --------------------------------------------------------------------------------

_NAME = re.compile(r"^\S(?:.{0,118}\S)?$")


def get_template(session: Session, name: str) -> EmailTemplate:
    found = session.scalar(select(EmailTemplate).where(EmailTemplate.name == name.strip()))
    if found is None:
        raise EmailTemplateNotFound(
            f"Modelo de e-mail não encontrado (template not found): {name}"
        )
    return found


def list_templates(session: Session) -> list[EmailTemplate]:
    return list(session.scalars(select(EmailTemplate).order_by(EmailTemplate.name)))


def create_template(
    session: Session, *, name: str, subject: str, body_text: str, body_html: str | None = None
) -> EmailTemplate:
    """Check and store a new template; refused with the part, line and name when unsafe."""
    name = _checked_name(name)
    if session.scalar(select(EmailTemplate.id).where(EmailTemplate.name == name)) is not None:
        raise EmailTemplateExists(f"Modelo já existe (template exists): {name}")
    body_html = body_html or None
    check_template(session, subject=subject, body_text=body_text, body_html=body_html)
    template = EmailTemplate(name=name, subject=subject, body_text=body_text, body_html=body_html)
    session.add(template)
    session.flush()
    log.info("template %s created: %s", template.id, name)
    return template


def edit_template(
    session: Session,
    name: str,
    *,
    new_name: str | None = None,
    subject: str | None = None,
    body_text: str | None = None,
    body_html: str | None = None,
) -> EmailTemplate:
    """Change parts of a template; ``body_html=""`` removes the HTML part.

    A rename also renames the template in the rules that send it.
    """
    template = get_template(session, name)
    subject = template.subject if subject is None else subject
    body_text = template.body_text if body_text is None else body_text
    body_html = template.body_html if body_html is None else (body_html or None)
    check_template(session, subject=subject, body_text=body_text, body_html=body_html)
    if new_name is not None and new_name.strip() != template.name:
        new_name = _checked_name(new_name)
        taken = session.scalar(select(EmailTemplate.id).where(EmailTemplate.name == new_name))
        if taken is not None:
            raise EmailTemplateExists(f"Modelo já existe (template exists): {new_name}")
        for rule in rules_sending(session, template.name):
            rule.actions = [
                {**a, "template": new_name} if _sends(a, template.name) else a
                for a in rule.actions
            ]
        template.name = new_name
    template.subject = subject
    template.body_text = body_text
    template.body_html = body_html
    session.flush()
    log.info("template %s edited: %s", template.id, template.name)
    return template


def remove_template(session: Session, name: str) -> None:
    """Delete a template no rule sends; refused with the names of the rules that do."""
    template = get_template(session, name)
    users = rules_sending(session, template.name)
    if users:
        names = ", ".join(rule.name for rule in users)
        raise EmailTemplateInUse(
            f"Modelo em uso pelas regras (template used by rules): {names}; "
            "tire-o das regras antes de remover"
        )
    session.delete(template)
    session.flush()
    log.info("template %s removed: %s", template.id, template.name)


def rules_sending(session: Session, template_name: str) -> list[Rule]:
    """Rules with an email action using the template (few rules: read them all)."""
    return [
        rule
        for rule in session.scalars(select(Rule).order_by(Rule.name))
        if any(_sends(action, template_name) for action in rule.actions or [])
    ]


def _sends(action: Mapping[str, Any], template_name: str) -> bool:
    return action.get("kind") == "email" and action.get("template") == template_name


def _checked_name(name: str) -> str:
    name = name.strip()
    if not _NAME.match(name):
        raise EmailTemplateRefused(
            f"nome inválido (bad name) {name!r}: de 1 a 120 caracteres, sem quebra de linha",
            part="subject",
            line=None,
            name=name,
        )
    return name


def variables_help(session: Session) -> list[tuple[str, str]]:
    """(name, description) lines for every variable and field, as `templates vars` shows."""
    lines = [("customer", CUSTOMER_DESCRIPTION)]
    for spec in customer_fields(session):
        prefix = "customer.custom." if spec.custom else "customer."
        kind = {"user": "e-mail"}.get(spec.kind, spec.kind)
        label = spec.label if spec.label == spec.label_en else f"{spec.label} ({spec.label_en})"
        lines.append((prefix + spec.key, f"{label}; {kind}"))
    for name, (description, attributes) in VARIABLES.items():
        lines.append((name, description))
        lines.extend((f"{name}.{attr}", text) for attr, text in attributes.items())
    lines.append(("| date_br", "filtro: data como 31/12/2025 (date filter)"))
    lines.append(("| money_br", "filtro: valor como R$ 1.234,56 (money filter)"))
    return lines
