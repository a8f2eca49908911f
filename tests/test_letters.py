"""Letters: every kind renders in both languages, and strangers' text stays data."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from portaria import letters
from portaria.letters import (
    KINDS,
    LetterContextError,
    UnknownLanguage,
    UnknownLetterKind,
    compose,
    resolve_language,
    single_line,
)

MARIA = {
    "name": "Maria Souza",
    "email": "maria.souza@example.com",
    "area": "Customer Success — Regional Sul",
    "access_type": "agente",
}
JOAO = {
    "name": "João Lima",
    "email": "joao.lima@example.com",
    "area": "Financeiro",
    "access_type": "comum",
}
REQUEST = {"requester_name": "Carla Mendes", "original_subject": "#ACESSO novos usuários"}


def context_for(kind: str) -> dict[str, object]:
    """A complete context for each kind of letter."""
    if kind in ("received", "approved"):
        return {**REQUEST, "people": [MARIA, JOAO]}
    if kind == "rejected":
        return {**REQUEST, "people": [MARIA], "reason": "Área sem contrato ativo."}
    if kind == "incomplete":
        return {
            **REQUEST,
            "people": [
                {**MARIA, "area": None, "access_type": None, "missing": ["area", "access_type"]},
                {
                    "name": None,
                    "email": None,
                    "area": "TI",
                    "access_type": "admin",
                    "missing": ["name", "email"],
                },
            ],
        }
    if kind == "welcome":
        return {
            "user": MARIA,
            "set_password_url": "https://portaria.example.com/set-password/tok123?a=1&b=2",
            "expires_at": datetime(2026, 12, 7, 17, 30, tzinfo=UTC),
            "console_url": "https://portaria.example.com",
        }
    if kind in ("mailbox_failing", "mailbox_recovered"):  # full tests: tests/test_health.py
        return {
            "mailbox": "imap://acesso%40example.com@imap.example.com:993/INBOX",
            "error": "IMAP server imap.example.com:993 refused the login",
            "last_error": "IMAP server imap.example.com:993 refused the login",
            "advice": "confira mailbox.username e a senha",
            "failing_since": datetime(2026, 12, 7, 12, 0, tzinfo=UTC),
            "last_success_at": None,
            "recovered_at": datetime(2026, 12, 7, 13, 0, tzinfo=UTC),
        }
    return {
        "requests": [
            {
                **MARIA,
                "id": 12,
                "access_type": "admin",
                "requester_email": "carla@example.com",
                "flags": ["existing_user", "pending_duplicate", "admin_access"],
            },
            {**JOAO, "id": 13, "requester_email": "carla@example.com", "flags": []},
        ],
        "console_url": "https://portaria.example.com",
    }


class TestEveryKindInBothLanguages:
    @pytest.mark.parametrize("language", ["pt-BR", "en"])
    @pytest.mark.parametrize("kind", KINDS)
    def test_renders_subject_text_and_html(self, kind: str, language: str) -> None:
        letter = compose(kind, language, context_for(kind))

        assert letter.subject
        assert "\n" not in letter.subject
        assert letter.text.endswith("\n")
        assert letter.html.startswith("<!DOCTYPE html>")
        assert f'<html lang="{language}">' in letter.html
        # No external resources: nothing to fetch when the email is opened.
        assert "<img" not in letter.html
        assert "<link" not in letter.html
        assert "<script" not in letter.html


class TestReceived:
    def test_pt_br_lists_who_was_queued(self) -> None:
        letter = compose("received", "pt-BR", context_for("received"))

        assert letter.subject == "Re: #ACESSO novos usuários — pedido recebido"
        assert letter.text.startswith("Olá, Carla Mendes!\n")
        assert "As 2 pessoas abaixo estão na fila" in letter.text
        assert (
            "- Maria Souza <maria.souza@example.com>\n"
            "  Área: Customer Success — Regional Sul\n"
            "  Tipo de acesso: Agente (atua nos clientes sob sua responsabilidade)\n"
            "- João Lima <joao.lima@example.com>\n"
            "  Área: Financeiro\n"
            "  Tipo de acesso: Comum (apenas visualização)\n"
        ) in letter.text
        assert "<strong>Maria Souza</strong> &lt;maria.souza@example.com&gt;" in letter.html
        assert "Tipo de acesso: Comum (apenas visualização)</li>" in letter.html

    def test_en_lists_who_was_queued(self) -> None:
        letter = compose("received", "en", context_for("received"))

        assert letter.subject == "Re: #ACESSO novos usuários — request received"
        assert letter.text.startswith("Hello, Carla Mendes!\n")
        assert "  Access type: Agente (works on the customers in their care)\n" in letter.text
        assert "  Access type: Comum (view only)\n" in letter.text

    def test_one_person_reads_in_the_singular(self) -> None:
        letter = compose("received", "pt-BR", {**REQUEST, "people": [MARIA]})

        assert "A pessoa abaixo está na fila" in letter.text

    def test_existing_reply_prefix_is_not_doubled(self) -> None:
        context = {**context_for("received"), "original_subject": "RES: #ACESSO Maria"}

        assert compose("received", "pt-BR", context).subject == (
            "RES: #ACESSO Maria — pedido recebido"
        )

    def test_without_original_subject_or_requester_name(self) -> None:
        context = {"requester_name": "", "original_subject": "", "people": [MARIA]}
        letter = compose("received", "pt-BR", context)

        assert letter.subject == "Pedido de acesso recebido"
        assert letter.text.startswith("Olá!\n")


class TestIncomplete:
    def test_pt_br_says_what_is_missing_for_whom(self) -> None:
        letter = compose("incomplete", "pt-BR", context_for("incomplete"))

        assert letter.subject == "Re: #ACESSO novos usuários — faltam informações"
        assert "Pessoa 1: Maria Souza\n  Falta: Área, Tipo de acesso\n" in letter.text
        assert "Pessoa 2: (sem nome)\n  Falta: Nome, E-mail\n" in letter.text
        assert "Nome:\nE-mail:\nÁrea:\nTipo de acesso: Comum, Agente ou Admin\n" in letter.text
        assert "- Admin (acesso administrativo)\n" in letter.text
        assert "Nome:\nE-mail:\nÁrea:\nTipo de acesso: Comum, Agente ou Admin</pre>" in (
            letter.html
        )
        assert "Falta: Área, Tipo de acesso</li>" in letter.html

    def test_en_says_what_is_missing_for_whom(self) -> None:
        letter = compose("incomplete", "en", context_for("incomplete"))

        assert letter.subject == "Re: #ACESSO novos usuários — information missing"
        assert "Person 1: Maria Souza\n  Missing: Area, Access type\n" in letter.text
        assert "Person 2: (no name)\n  Missing: Name, Email\n" in letter.text
        assert "Tipo de acesso: Comum, Agente ou Admin\n" in letter.text

    def test_person_known_only_by_email(self) -> None:
        person = {
            "name": "",
            "email": "ana@example.com",
            "area": None,
            "access_type": None,
            "missing": ["name", "area", "access_type"],
        }
        letter = compose("incomplete", "pt-BR", {**REQUEST, "people": [person]})

        assert "Pessoa 1: ana@example.com\n  Falta: Nome, Área, Tipo de acesso\n" in letter.text

    def test_nobody_found(self) -> None:
        letter = compose("incomplete", "pt-BR", {**REQUEST, "people": []})

        assert "Não encontramos no e-mail os dados de nenhuma pessoa." in letter.text


# People whose written values could not be used, as the request rows record them.
UNUSABLE = [
    {
        "name": "Ana Lima",
        "email": None,
        "area": None,
        "access_type": "comum",
        "missing": ["email", "area"],
        "problems": {
            "email": {
                "kind": "unclear",
                "value": "email ruim@cliente.test",
                "found": ["ruim@cliente.test"],
            }
        },
    },
    {
        "name": None,
        "email": "bia@cliente.test",
        "area": "RH",
        "access_type": None,
        "missing": ["name", "access_type"],
        "problems": {
            "name": {"kind": "too_long", "length": 5000, "limit": 200},
            "access_type": {
                "kind": "several",
                "value": "Comum, Admin",
                "found": ["comum", "admin"],
            },
        },
    },
    {
        "name": "Caio Reis",
        "email": None,
        "area": "TI",
        "access_type": None,
        "missing": ["email", "access_type"],
        "problems": {
            "email": {"kind": "invalid", "value": "email.ruim@@cliente"},
            "access_type": {"kind": "unrecognised", "value": "Superusuário"},
        },
    },
]


class TestIncompleteSaysWhatWasWrong:
    def test_pt_br_text(self) -> None:
        letter = compose("incomplete", "pt-BR", {**REQUEST, "people": UNUSABLE})

        assert (
            "Pessoa 1: Ana Lima\n"
            "  E-mail inválido: email ruim@cliente.test (escreva só o endereço, sem outras "
            "palavras)\n"
            "  Falta: Área\n"
            "\n"
            "Pessoa 2: bia@cliente.test\n"
            "  Nome longo demais: 5000 caracteres, máximo 200\n"
            "  Mais de um tipo de acesso: Comum, Admin\n"
            "\n"
            "Pessoa 3: Caio Reis\n"
            "  E-mail inválido: email.ruim@@cliente\n"
            "  Tipo de acesso não reconhecido: Superusuário (use Comum, Agente ou Admin)\n"
        ) in letter.text
        assert "Falta: E-mail" not in letter.text

    def test_en_text(self) -> None:
        letter = compose("incomplete", "en", {**REQUEST, "people": UNUSABLE})

        assert (
            "Person 1: Ana Lima\n"
            "  Invalid email: email ruim@cliente.test (write the address alone, without "
            "other words)\n"
            "  Missing: Area\n"
            "\n"
            "Person 2: bia@cliente.test\n"
            "  Name too long: 5000 characters, at most 200\n"
            "  More than one access type: Comum, Admin\n"
            "\n"
            "Person 3: Caio Reis\n"
            "  Invalid email: email.ruim@@cliente\n"
            "  Access type not recognised: Superusuário (use Comum, Agente or Admin)\n"
        ) in letter.text

    @pytest.mark.parametrize(
        ("language", "lines"),
        [
            (
                "pt-BR",
                "<strong>Pessoa 2: bia@cliente.test</strong><br>\n"
                "Nome longo demais: 5000 caracteres, máximo 200<br>\n"
                "Mais de um tipo de acesso: Comum, Admin</li>",
            ),
            (
                "en",
                "<strong>Person 1: Ana Lima</strong><br>\n"
                "Invalid email: email ruim@cliente.test (write the address alone, without "
                "other words)<br>\nMissing: Area</li>",
            ),
        ],
    )
    def test_html(self, language: str, lines: str) -> None:
        letter = compose("incomplete", language, {**REQUEST, "people": UNUSABLE})

        assert lines in letter.html

    def test_quoted_value_is_escaped_one_line_and_bounded(self) -> None:
        value = "<b>x</b>\r\nBcc: alvo@cliente.test " + "a" * 300 + "@cliente.test"
        person = {
            **UNUSABLE[2],
            "problems": {"email": {"kind": "invalid", "value": value}},
            "missing": ["email"],
        }

        letter = compose("incomplete", "pt-BR", {**REQUEST, "people": [person]})

        shown = "<b>x</b> Bcc: alvo@cliente.test aaaaaaaa…aaaaaa@cliente.test"
        assert f"  E-mail inválido: {shown}\n" in letter.text
        assert "E-mail inválido: &lt;b&gt;x&lt;/b&gt; Bcc: alvo@cliente.test aaaaaaaa…" in (
            letter.html
        )
        assert "<b>x</b>" not in letter.html

    def test_problem_of_an_unknown_kind_still_names_its_field(self) -> None:
        person = {**UNUSABLE[2], "problems": {"email": {"kind": "novo", "value": "x"}}}

        letter = compose("incomplete", "pt-BR", {**REQUEST, "people": [person]})

        assert "  E-mail: valor que não pode ser usado: x\n  Falta: Tipo de acesso\n" in (
            letter.text
        )


class TestApprovedAndRejected:
    def test_approved_says_who_got_which_access(self) -> None:
        letter = compose("approved", "pt-BR", context_for("approved"))

        assert letter.subject == "Re: #ACESSO novos usuários — acesso liberado"
        assert "Estas pessoas já têm acesso à plataforma:" in letter.text
        assert "  Tipo de acesso: Agente (atua nos clientes sob sua responsabilidade)\n" in (
            letter.text
        )
        assert "Cada uma vai receber um e-mail de boas-vindas" in letter.text

    def test_approved_en(self) -> None:
        letter = compose("approved", "en", context_for("approved"))

        assert letter.subject == "Re: #ACESSO novos usuários — access granted"
        assert "- João Lima <joao.lima@example.com>\n" in letter.text

    @pytest.mark.parametrize(
        ("language", "subject", "reason_line"),
        [
            ("pt-BR", "Re: #ACESSO novos usuários — pedido não aprovado", "Motivo:"),
            ("en", "Re: #ACESSO novos usuários — request not approved", "Reason:"),
        ],
    )
    def test_rejected_gives_who_and_the_reason(
        self, language: str, subject: str, reason_line: str
    ) -> None:
        letter = compose("rejected", language, context_for("rejected"))

        assert letter.subject == subject
        assert f"{reason_line} Área sem contrato ativo.\n" in letter.text
        assert f"<strong>{reason_line}</strong> Área sem contrato ativo.</p>" in letter.html
        assert "- Maria Souza <maria.souza@example.com>\n" in letter.text


class TestWelcome:
    def test_pt_br_has_access_link_expiry_and_login(self) -> None:
        letter = compose("welcome", "pt-BR", context_for("welcome"))

        assert letter.subject == "Boas-vindas! Seu acesso à plataforma está pronto"
        assert letter.text.startswith("Olá, Maria Souza!\n")
        assert "  Tipo de acesso: Agente (atua nos clientes sob sua responsabilidade)\n" in (
            letter.text
        )
        assert "  Área: Customer Success — Regional Sul\n" in letter.text
        assert "  Login: maria.souza@example.com\n" in letter.text
        assert "\nhttps://portaria.example.com/set-password/tok123?a=1&b=2\n" in letter.text
        # 17:30 UTC is 14:30 in São Paulo.
        assert "O link vale até 07/12/2026 14:30 (horário de Brasília)" in letter.text
        assert "entre em https://portaria.example.com com o seu e-mail" in letter.text
        assert 'href="https://portaria.example.com/set-password/tok123?a=1&amp;b=2"' in (
            letter.html
        )
        assert "<strong>07/12/2026 14:30 (horário de Brasília)</strong>" in letter.html

    def test_en_shows_the_expiry_with_its_offset(self) -> None:
        letter = compose("welcome", "en", context_for("welcome"))

        assert letter.subject == "Welcome! Your access to the platform is ready"
        assert "valid until 2026-12-07 14:30 (Brasília time, UTC-03:00)" in letter.text
        assert "sign in at https://portaria.example.com with your email" in letter.text

    def test_naive_expiry_is_refused(self) -> None:
        context = {**context_for("welcome"), "expires_at": datetime(2026, 12, 7, 17, 30)}

        with pytest.raises(LetterContextError, match="aware datetime"):
            compose("welcome", "pt-BR", context)


class TestSupportNotice:
    def test_pt_br_lists_requests_flags_and_commands(self) -> None:
        letter = compose("support_notice", "pt-BR", context_for("support_notice"))

        assert letter.subject == "2 pedidos de acesso aguardando aprovação"
        assert (
            "Pedido 12: Maria Souza <maria.souza@example.com>\n"
            "  Área: Customer Success — Regional Sul\n"
            "  Acesso pedido: Admin (acesso administrativo)\n"
            "  Pedido por: carla@example.com\n"
            "  Atenção: já tem conta na plataforma; já há outro pedido pendente para esta "
            "pessoa; pede acesso de administrador\n"
            "  Aprovar: portaria requests approve 12\n"
            '  Recusar: portaria requests reject 12 --reason "motivo"\n'
        ) in letter.text
        assert (
            "Pedido 13: João Lima <joao.lima@example.com>\n"
            "  Área: Financeiro\n"
            "  Acesso pedido: Comum (apenas visualização)\n"
            "  Pedido por: carla@example.com\n"
            "  Aprovar: portaria requests approve 13\n"
        ) in letter.text
        assert "revisar os pedidos no console: https://portaria.example.com" in letter.text
        assert 'portaria requests reject 12 --reason "motivo"</pre>' in letter.html

    def test_en_flags_in_words(self) -> None:
        letter = compose("support_notice", "en", context_for("support_notice"))

        assert letter.subject == "2 access requests awaiting approval"
        assert (
            "  Note: already has an account on the platform; another pending request exists "
            "for this person; asks for administrator access\n"
        ) in letter.text
        assert "  Approve: portaria requests approve 12\n" in letter.text

    def test_one_request_in_the_singular(self) -> None:
        context = context_for("support_notice")
        context["requests"] = context["requests"][:1]  # type: ignore[index]

        letter = compose("support_notice", "pt-BR", context)

        assert letter.subject == "1 pedido de acesso aguardando aprovação"


class TestStrangersTextStaysData:
    def test_template_syntax_in_a_name_is_printed_not_evaluated(self) -> None:
        person = {**MARIA, "name": "{{ 7*7 }} {% if true %}x{% endif %}"}
        letter = compose("received", "pt-BR", {**REQUEST, "people": [person]})

        assert "- {{ 7*7 }} {% if true %}x{% endif %} <maria.souza@example.com>" in letter.text
        assert "<strong>{{ 7*7 }} {% if true %}x{% endif %}</strong>" in letter.html
        assert "49" not in letter.text

    def test_html_in_a_name_is_escaped_in_the_html_part_only(self) -> None:
        person = {**MARIA, "name": '<script>alert("x")</script>', "area": "R&D <b>"}
        letter = compose("received", "pt-BR", {**REQUEST, "people": [person]})

        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in letter.html
        assert "<script>" not in letter.html
        assert "Área: R&amp;D &lt;b&gt;<br>" in letter.html
        assert '- <script>alert("x")</script> <maria.souza@example.com>' in letter.text
        assert "  Área: R&D <b>\n" in letter.text

    def test_line_breaks_never_survive_into_the_subject(self) -> None:
        context = {
            **REQUEST,
            "original_subject": "#ACESSO\r\nBcc: x@evil.example\r\n\r\nbody",
            "people": [MARIA],
        }

        letter = compose("received", "pt-BR", context)

        assert letter.subject == "Re: #ACESSO Bcc: x@evil.example body — pedido recebido"

    def test_line_breaks_in_a_name_stay_on_its_line(self) -> None:
        context = {**REQUEST, "requester_name": "Ana\r\nBcc: x@evil.example", "people": [MARIA]}

        letter = compose("received", "pt-BR", context)

        assert letter.text.startswith("Olá, Ana Bcc: x@evil.example!\n")

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("a\r\nb", "a b"),
            ("a\tb\x00c\x7fd", "a b c d"),
            ("a\u2028b\u2029c", "a b c"),
            ("\u202eevil", "evil"),
            ("  many   spaces  ", "many spaces"),
            (None, ""),
        ],
    )
    def test_single_line(self, raw: str | None, expected: str) -> None:
        assert single_line(raw) == expected


class TestLanguagesAndErrors:
    def test_unknown_kind(self) -> None:
        with pytest.raises(UnknownLetterKind, match="no letter kind 'invoice'"):
            compose("invoice", "pt-BR", {})

    def test_unknown_language(self) -> None:
        with pytest.raises(UnknownLanguage, match="no email templates for language 'xx'"):
            compose("received", "xx", context_for("received"))

    @pytest.mark.parametrize(
        ("asked", "resolved"),
        [
            ("pt-BR", "pt-BR"),
            ("pt_br", "pt-BR"),
            ("pt", "pt-BR"),
            ("en-US", "en"),
            ("EN", "en"),
            (None, "pt-BR"),
            ("", "pt-BR"),
        ],
    )
    def test_resolve_language(self, asked: str | None, resolved: str) -> None:
        assert resolve_language(asked) == resolved

    def test_missing_context_names_the_key(self) -> None:
        context = context_for("welcome")
        del context["set_password_url"]

        with pytest.raises(LetterContextError, match="set_password_url"):
            compose("welcome", "pt-BR", context)

    def test_unknown_access_type_is_shown_as_given(self) -> None:
        person = {**MARIA, "access_type": "superuser"}
        letter = compose("received", "pt-BR", {**REQUEST, "people": [person]})

        assert "  Tipo de acesso: superuser\n" in letter.text

    def test_missing_template_falls_back_to_pt_br(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        folder = tmp_path / "email"
        shutil.copytree(letters.template_folder(), folder)
        (folder / "es").mkdir()
        (folder / "es" / "received.subject.txt").write_text("Solicitud recibida\n")
        monkeypatch.setattr(letters, "template_folder", lambda: folder)
        letters._environment.cache_clear()
        try:
            letter = compose("received", "es", context_for("received"))
        finally:
            letters._environment.cache_clear()

        assert letter.subject == "Solicitud recibida"
        assert letter.text.startswith("Olá, Carla Mendes!\n")
