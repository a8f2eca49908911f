"""Sender policy: allowed requesters, Authentication-Results, held messages, and the
optional auto-approval of Comum requests from trusted requesters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from config.settings import ConfigError, IntakeSettings, Settings, load_settings
from intake.models import AutoReply, InboundMessage
from intake.policy import (
    AuthenticationResult,
    AuthenticationResults,
    address_matches,
    parse_authentication_results,
)
from intake.reading import read_message
from intake.receiving import receive
from portaria.cli import app
from portaria.outbox_models import OutboxMessage
from portaria.wiring import Service, open_service
from provisioning.approvals import approve
from provisioning.audit import events_for
from provisioning.directory import create_user
from provisioning.models import AccessRequest, User
from tests.mail import person_block, request_message

OUR_SERVER = "mx.portaria.test"
GENUINE = (
    f"{OUR_SERVER}; dkim=pass header.d=cliente.test; "
    "spf=pass smtp.mailfrom=helena.costa@cliente.test; dmarc=pass header.from=cliente.test"
)
ANA = person_block("Ana Lima", "ana.lima@cliente.test", "Financeiro", "Comum")


def with_results(raw: bytes, *values: str) -> bytes:
    """The message with Authentication-Results headers on top, the first one topmost."""
    return b"".join(f"Authentication-Results: {v}\n".encode() for v in values) + raw


def received(service: Service, raw: bytes, key: str = "1") -> InboundMessage:
    with service.transaction() as session:
        row = receive(session, service.settings, mailbox="test", key=key, raw=raw)
        session.flush()
        session.expunge(row)
    return row


def requests_of(service: Service) -> list[AccessRequest]:
    with service.sessions() as session:
        rows = list(session.scalars(select(AccessRequest).order_by(AccessRequest.id)))
        session.expunge_all()
    return rows


def kinds_and_recipients(service: Service) -> list[tuple[str, list[str]]]:
    with service.sessions() as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        return [(row.kind, row.recipients) for row in rows]


def require_dmarc(settings: Settings, *methods: str, **more: object) -> None:
    settings.intake = IntakeSettings(
        require_authentication=list(methods or ("dmarc",)), authserv_id=OUR_SERVER, **more
    )


class TestAuthenticationResultsParsing:
    def test_gmail_style_header_with_comments(self) -> None:
        parsed = parse_authentication_results(
            "mx.google.com;\r\n dkim=pass header.i=@cliente.test header.s=s1 header.b=ABC;"
            " spf=pass (google.com: domain of a@cliente.test designates 192.0.2.1 as "
            "permitted sender) smtp.mailfrom=a@cliente.test;"
            " dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=cliente.test"
        )

        assert parsed == AuthenticationResults(
            "mx.google.com",
            (
                AuthenticationResult(
                    "dkim",
                    "pass",
                    {"header.i": "@cliente.test", "header.s": "s1", "header.b": "abc"},
                ),
                AuthenticationResult("spf", "pass", {"smtp.mailfrom": "a@cliente.test"}),
                AuthenticationResult("dmarc", "pass", {"header.from": "cliente.test"}),
            ),
        )

    def test_version_reason_and_quoted_semicolons(self) -> None:
        parsed = parse_authentication_results(
            'MX.Portaria.Test 1; dkim/1=fail reason="bad; sig" header.d=x.test; none'
        )

        assert parsed == AuthenticationResults(
            OUR_SERVER, (AuthenticationResult("dkim", "fail", {"header.d": "x.test"}),)
        )

    def test_empty_value(self) -> None:
        assert parse_authentication_results(" (only a comment) ") is None


class TestAllowedRequesters:
    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            ("ana@cliente.test", True),
            ("ana@rh.cliente.test", True),
            ("ana@outrocliente.test", False),
            ("parceira@outra.test", True),
            ("outra@outra.test", False),
            ("sem-dominio", False),
        ],
    )
    def test_address_and_domain_entries(self, address: str, expected: bool) -> None:
        assert address_matches(address, ["cliente.test", "parceira@outra.test"]) is expected

    def test_stranger_is_held_flagged_and_not_answered(
        self, service: Service, settings: Settings
    ) -> None:
        settings.intake = IntakeSettings(allowed_requesters=["empresa.test"])

        row = received(service, request_message(ANA))

        assert (row.outcome, row.destination) == ("held", "attention")
        assert row.reason == (
            "remetente não permitido (not an allowed requester): helena.costa@cliente.test; "
            "veja (see) intake.allowed_requesters; "
            "remetente não respondido, fora da política de remetentes "
            "(sender not answered, outside the sender policy)"
        )
        [request] = requests_of(service)
        assert (request.status, request.flags) == ("pending", ["sender_outside_policy"])
        assert kinds_and_recipients(service) == [("support_notice", ["suporte@portaria.test"])]

    def test_allowed_domain_is_answered(self, service: Service, settings: Settings) -> None:
        settings.intake = IntakeSettings(allowed_requesters=["cliente.test"])

        row = received(service, request_message(ANA))

        assert (row.outcome, row.reason) == ("request", "")
        assert [kind for kind, _ in kinds_and_recipients(service)] == [
            "received",
            "support_notice",
        ]

    def test_held_incomplete_request_is_not_answered_either(
        self, service: Service, settings: Settings
    ) -> None:
        settings.intake = IntakeSettings(allowed_requesters=["empresa.test"])

        row = received(service, request_message("Nome: Fábio Queiroga\n"))

        assert row.outcome == "held"
        assert row.reason == (
            "remetente não permitido (not an allowed requester): helena.costa@cliente.test; "
            "veja (see) intake.allowed_requesters; "
            "faltam (missing): e-mail, área, tipo de acesso; "
            "remetente não respondido, fora da política de remetentes "
            "(sender not answered, outside the sender policy)"
        )
        assert kinds_and_recipients(service) == []

    def test_held_request_is_approved_only_by_a_person(
        self, service: Service, settings: Settings
    ) -> None:
        settings.intake = IntakeSettings(allowed_requesters=["empresa.test"])
        received(service, request_message(ANA))
        [request] = requests_of(service)

        with service.transaction() as session:
            approve(session, settings, [request.id], actor="cli:lucia")

        [decided] = requests_of(service)
        assert (decided.status, decided.decided_by) == ("approved", "cli:lucia")


def with_from(raw: bytes, *lines: str) -> bytes:
    """The message with its From line replaced by `lines`, byte for byte."""
    head, _, body = raw.partition(b"\n\n")
    kept = [line for line in head.split(b"\n") if not line.startswith(b"From:")]
    return b"\n".join([*(line.encode() for line in lines), *kept]) + b"\n\n" + body


class TestPlainSender:
    @pytest.mark.parametrize(
        "value",
        [
            "helena.costa@cliente.test",
            "<helena.costa@cliente.test>",
            "Helena Costa <helena.costa@cliente.test>",
            '"Costa, Helena" <helena.costa@cliente.test>',
            "=?utf-8?q?Jos=C3=A9_Sim=C3=A3o?= <jose@cliente.test>",
            # Outlook's encoded name with a comma inside the encoded word.
            "=?iso-8859-1?Q?B=FCrling,=20Andreas?= <andreas@cliente.test>",
            '"Helena (helena.costa@cliente.test)" <helena.costa@cliente.test>',
            "helena.costa@cliente.test (Helena Costa)",
            "Helena <helena@ação.com.br>",
            '"helena costa"@cliente.test',
        ],
    )
    def test_one_plain_sender_has_no_doubts(self, value: str) -> None:
        message = read_message(with_from(request_message(ANA), f"From: {value}"))

        assert message.sender_doubts == []

    @pytest.mark.parametrize(
        ("lines", "doubts"),
        [
            (
                ["From: Big Bug bb@bug.test"],
                [
                    "From não é um endereço bem formado (not one well-formed address): "
                    "'Big Bug bb@bug.test'"
                ],
            ),
            (
                ["From: x@evil.test helena.costa@cliente.test"],
                [
                    "From não é um endereço bem formado (not one well-formed address): "
                    "'x@evil.test helena.costa@cliente.test'"
                ],
            ),
            (
                ['From: "Helena" <helena.costa@cliente.test>:<x@evil.test>'],
                [
                    "From não é um endereço bem formado (not one well-formed address): "
                    "'\"Helena\" <helena.costa@cliente.test>:<x@evil.test>'"
                ],
            ),
            (
                ["From: <helena.costa@cliente.test"],
                [
                    "From não é um endereço bem formado (not one well-formed address): "
                    "'<helena.costa@cliente.test'"
                ],
            ),
            (
                ["From: x@evil.test, helena.costa@cliente.test"],
                [
                    "2 endereços no From (addresses in From): "
                    "x@evil.test, helena.costa@cliente.test"
                ],
            ),
            (
                ["From: helena.costa@cliente.test", "From : x@evil.test"],
                ["2 campos From (From fields): helena.costa@cliente.test, x@evil.test"],
            ),
            (
                ['From: "helena.costa@cliente.test" <x@evil.test>'],
                [
                    "o nome no From mostra outro endereço (the From name shows another "
                    "address): helena.costa@cliente.test"
                ],
            ),
            (
                ["From: =?utf-8?q?helena.costa=40cliente.test?= <x@evil.test>"],
                [
                    "o nome no From mostra outro endereço (the From name shows another "
                    "address): helena.costa@cliente.test"
                ],
            ),
            (
                ["From: x@evil.test (helena.costa@cliente.test)"],
                [
                    "o nome no From mostra outro endereço (the From name shows another "
                    "address): helena.costa@cliente.test"
                ],
            ),
            (
                ['From: "Helena <helena.costa@cliente.test>" <x@evil.test>'],
                [
                    "o nome no From mostra outro endereço (the From name shows another "
                    "address): helena.costa@cliente.test"
                ],
            ),
            (
                ['From: "helena.costa\uff20cliente.test" <x@evil.test>'],
                [
                    "o nome no From mostra outro endereço (the From name shows another "
                    "address): helena.costa@cliente.test"
                ],
            ),
            (
                ["From: <@evil.test:helena.costa@cliente.test>"],
                [
                    "From com rota de origem obsoleta (obsolete source route): "
                    "'<@evil.test:helena.costa@cliente.test>'"
                ],
            ),
            (
                ["From: Helena <helena.costa@cl\u0456ente.test>"],
                [
                    "o domínio do From mistura alfabetos (From domain mixes scripts): "
                    "helena.costa@cl\u0456ente.test"
                ],
            ),
            (
                ["From: Helena <helena.costa@xn--clente-qvf.test>"],
                [
                    "o domínio do From mistura alfabetos (From domain mixes scripts): "
                    "helena.costa@xn--clente-qvf.test"
                ],
            ),
            (["From: undisclosed-senders:;"], ["From sem endereço (From holds no address)"]),
            (["Reply-To: helena.costa@cliente.test"], ["sem campo From (no From field)"]),
        ],
    )
    def test_each_kind_of_unclear_sender_is_named(
        self, lines: list[str], doubts: list[str]
    ) -> None:
        message = read_message(with_from(request_message(ANA), *lines))

        assert message.sender_doubts == doubts

    def test_an_angle_bracket_inside_the_quoted_name_is_not_the_address(self) -> None:
        raw = with_from(request_message(ANA), 'From: "Boss <boss@cliente.test>" <x@evil.test>')

        message = read_message(raw)

        assert (message.from_name, message.from_address) == (
            "Boss <boss@cliente.test>",
            "x@evil.test",
        )

    def test_unclear_sender_is_held_flagged_and_not_answered(self, service: Service) -> None:
        raw = with_from(request_message(ANA), 'From: "diretora@cliente.test" <x@evil.test>')

        row = received(service, raw)

        assert (row.outcome, row.destination) == ("held", "attention")
        assert row.reason == (
            "remetente incerto (sender unclear): o nome no From mostra outro endereço "
            "(the From name shows another address): diretora@cliente.test; "
            "uma pessoa deve conferir quem enviou (a person must check who sent it); "
            "remetente não respondido, fora da política de remetentes "
            "(sender not answered, outside the sender policy)"
        )
        [request] = requests_of(service)
        assert (request.status, request.flags) == ("pending", ["sender_outside_policy"])
        assert kinds_and_recipients(service) == [("support_notice", ["suporte@portaria.test"])]

    def test_a_second_from_is_held_even_when_authentication_passed(
        self, service: Service, settings: Settings
    ) -> None:
        # The receiving server judged one From; we must not act on another.
        require_dmarc(settings, trusted_requesters=["cliente.test"])
        raw = with_from(
            request_message(ANA), "From: helena.costa@cliente.test", "From : x@evil.test"
        )

        row = received(service, with_results(raw, GENUINE))

        assert row.outcome == "held"
        assert row.reason.startswith(
            "remetente incerto (sender unclear): 2 campos From (From fields): "
            "helena.costa@cliente.test, x@evil.test; "
        )
        [request] = requests_of(service)
        assert request.status == "pending"


class TestAuthentication:
    def test_no_header_holds_the_request(self, service: Service, settings: Settings) -> None:
        require_dmarc(settings)

        row = received(service, request_message(ANA))

        assert row.outcome == "held"
        assert row.reason.startswith(
            "remetente não autenticado (sender not authenticated): Authentication-Results: "
            "nenhum de (none from) mx.portaria.test; exigido (required): dmarc=pass"
        )

    def test_dmarc_pass_from_our_server_is_accepted(
        self, service: Service, settings: Settings
    ) -> None:
        require_dmarc(settings)

        row = received(service, with_results(request_message(ANA), GENUINE))

        assert (row.outcome, row.reason) == ("request", "")

    def test_only_the_topmost_header_counts(self, service: Service, settings: Settings) -> None:
        require_dmarc(settings)
        forged_below = f"{OUR_SERVER}; dmarc=pass header.from=cliente.test"

        row = received(
            service,
            with_results(
                request_message(ANA),
                f"{OUR_SERVER}; dmarc=fail header.from=cliente.test",
                forged_below,
            ),
        )

        assert row.outcome == "held"
        assert row.reason.startswith(
            "remetente não autenticado (sender not authenticated): helena.costa@cliente.test; "
            "mx.portaria.test diz (says) dmarc=fail para (for) cliente.test; exigido para o "
            "domínio do remetente "
            "(required for the sender's domain): dmarc=pass"
        )

    def test_a_pass_for_another_domain_says_which(
        self, service: Service, settings: Settings
    ) -> None:
        require_dmarc(settings)
        results = f"{OUR_SERVER}; dmarc=pass header.from=evil.test"

        row = received(service, with_results(request_message(ANA), results))

        assert row.outcome == "held"
        assert "diz (says) dmarc=pass para (for) evil.test;" in row.reason

    def test_a_header_from_another_server_on_top_is_not_believed(
        self, service: Service, settings: Settings
    ) -> None:
        require_dmarc(settings)

        row = received(
            service,
            with_results(request_message(ANA), "mx.evil.test; dmarc=pass", GENUINE),
        )

        assert row.outcome == "held"
        assert row.reason.startswith(
            "remetente não autenticado (sender not authenticated): Authentication-Results: "
            "o do topo é de (the topmost is from) mx.evil.test, "
            "não do nosso servidor (not from our server) mx.portaria.test; "
            "exigido (required): dmarc=pass"
        )

    @pytest.mark.parametrize(
        ("methods", "results", "outcome"),
        [
            (("dkim",), "dkim=pass header.d=cliente.test", "request"),
            (("dkim",), "dkim=pass header.i=@rh.cliente.test", "request"),
            # A stranger's own valid signature says nothing about the From address.
            (("dkim",), "dkim=pass header.d=evil.test", "held"),
            (("spf",), "spf=pass smtp.mailfrom=bounces@cliente.test", "request"),
            (("spf",), "spf=pass smtp.mailfrom=bounces@evil.test", "held"),
            (("dmarc",), "dmarc=pass header.from=evil.test", "held"),
            (("dmarc",), "dmarc=pass", "request"),
            (("dmarc", "dkim"), "dmarc=fail; dkim=pass header.d=cliente.test", "request"),
            (("dmarc",), "dkim=pass header.d=cliente.test", "held"),
        ],
    )
    def test_passes_count_only_when_aligned_with_from(
        self,
        service: Service,
        settings: Settings,
        methods: tuple[str, ...],
        results: str,
        outcome: str,
    ) -> None:
        require_dmarc(settings, *methods)

        row = received(service, with_results(request_message(ANA), f"{OUR_SERVER}; {results}"))

        assert row.outcome == outcome


class TestFlags:
    def test_admin_requests_are_always_flagged(self, service: Service) -> None:
        received(service, request_message(person_block("Ana Lima", "a@c.test", "TI", "Admin")))

        [request] = requests_of(service)
        assert (request.status, request.flags) == ("pending", ["admin_access"])

    def test_cli_shows_requests_outside_policy(self, tmp_path: Path) -> None:
        config = tmp_path / "portaria.toml"
        config.write_text(
            '[database]\nurl = "sqlite:///portaria.db"\n'
            '[outbound]\nfrom_address = "acesso@portaria.test"\n'
            '[intake]\nallowed_requesters = ["empresa.test"]\n'
        )
        service = open_service(load_settings(config), migrate=True)
        received(service, request_message(ANA))

        runner = CliRunner()
        listed = runner.invoke(app, ["requests", "list", "--config", str(config)])
        shown = runner.invoke(app, ["requests", "show", "1", "--config", str(config)])

        assert listed.exit_code == 0, listed.output
        row = next(line for line in listed.output.splitlines() if "ana.lima@cliente.test" in line)
        assert "sender_outside_policy" in row
        assert shown.exit_code == 0, shown.output
        assert "           sinais (flags): sender_outside_policy" in shown.output.splitlines()
        assert (
            "         entrada (intake): held: remetente não permitido (not an allowed requester): "
            "helena.costa@cliente.test; veja (see) intake.allowed_requesters; "
            "remetente não respondido, fora da política de remetentes "
            "(sender not answered, outside the sender policy)"
        ) in shown.output.splitlines()


class TestAutoApproval:
    def test_off_by_default(self, service: Service) -> None:
        received(service, with_results(request_message(ANA), GENUINE))

        [request] = requests_of(service)
        assert (request.status, request.decided_by) == ("pending", None)

    def test_trusted_comum_is_approved_and_audited_the_rest_waits(
        self, service: Service, settings: Settings
    ) -> None:
        require_dmarc(settings, trusted_requesters=["cliente.test"])
        body = "\n".join(
            [
                ANA,
                person_block("Bruno Dias", "bruno.dias@cliente.test", "Vendas", "Agente"),
                person_block("Carla Reis", "carla.reis@cliente.test", "TI", "Admin"),
            ]
        )

        row = received(service, with_results(request_message(body), GENUINE))

        assert (row.outcome, row.reason) == (
            "request",
            "aprovado automaticamente (approved automatically): #1, "
            "por (by) auto:trusted-requester",
        )
        ana, bruno, carla = requests_of(service)
        assert (ana.status, ana.decided_by) == ("approved", "auto:trusted-requester")
        assert (bruno.status, bruno.flags) == ("pending", [])
        assert (carla.status, carla.flags) == ("pending", ["admin_access"])
        with service.sessions() as session:
            [event] = events_for(session, "access_request", ana.id)
            user = session.scalar(select(User).where(User.email == "ana.lima@cliente.test"))
            ledger = list(session.scalars(select(AutoReply.recipient)))
        assert (event.actor, event.action) == ("auto:trusted-requester", "request.approved")
        assert user.role == "comum"
        assert kinds_and_recipients(service) == [
            ("welcome", ["ana.lima@cliente.test"]),
            ("approved", ["helena.costa@cliente.test"]),
            ("received", ["helena.costa@cliente.test"]),
            ("support_notice", ["suporte@portaria.test"]),
        ]
        assert ledger == ["helena.costa@cliente.test", "helena.costa@cliente.test"]

    def test_unauthenticated_trusted_sender_is_held_not_approved(
        self, service: Service, settings: Settings
    ) -> None:
        require_dmarc(settings, trusted_requesters=["cliente.test"])

        row = received(service, request_message(ANA))

        assert row.outcome == "held"
        [request] = requests_of(service)
        assert (request.status, request.flags) == ("pending", ["sender_outside_policy"])

    def test_untrusted_sender_waits_for_a_person(
        self, service: Service, settings: Settings
    ) -> None:
        require_dmarc(settings, trusted_requesters=["gestora@cliente.test"])

        received(service, with_results(request_message(ANA), GENUINE))

        [request] = requests_of(service)
        assert request.status == "pending"

    def test_flagged_requests_are_never_approved_automatically(
        self, service: Service, settings: Settings
    ) -> None:
        require_dmarc(settings, trusted_requesters=["cliente.test"])
        with service.transaction() as session:
            create_user(
                session,
                name="Ana Lima",
                email="ana.lima@cliente.test",
                area="RH",
                role="comum",
                created_via="test",
            )
        duplicate = person_block("Bruno Dias", "bruno.dias@cliente.test", "Vendas", "Comum")
        received(service, request_message(duplicate, message_id="<d1@c.test>"), "d1")
        bruno_first = requests_of(service)[0]
        assert bruno_first.status == "pending"  # no Authentication-Results: held

        row = received(
            service,
            with_results(
                request_message(ANA + "\n" + duplicate, message_id="<d2@c.test>"), GENUINE
            ),
            "d2",
        )

        assert (row.outcome, row.reason) == ("request", "")
        flags = [(r.email, r.status, r.flags) for r in requests_of(service)[1:]]
        assert flags == [
            ("ana.lima@cliente.test", "pending", ["existing_user"]),
            ("bruno.dias@cliente.test", "pending", ["pending_duplicate"]),
        ]

    def test_not_approved_automatically_over_the_reply_cap(
        self, service: Service, settings: Settings
    ) -> None:
        require_dmarc(settings, trusted_requesters=["cliente.test"], auto_replies_per_hour=1)
        received(service, with_results(request_message(ANA, message_id="<a@c.test>"), GENUINE))
        other = person_block("Bruno Dias", "bruno.dias@cliente.test", "Vendas", "Comum")

        row = received(
            service, with_results(request_message(other, message_id="<b@c.test>"), GENUINE), "2"
        )

        assert row.reason == (
            "não aprovado automaticamente (not approved automatically): "
            "limite de respostas automáticas atingido (automatic answer limit reached): "
            "helena.costa@cliente.test, 1 na última hora (in the last hour); "
            "intake.auto_replies_per_hour = 1; "
            "resposta de recebimento suprimida (received answer suppressed): "
            "limite de respostas automáticas atingido (automatic answer limit reached): "
            "helena.costa@cliente.test, 1 na última hora (in the last hour); "
            "intake.auto_replies_per_hour = 1"
        )
        assert [r.status for r in requests_of(service)] == ["approved", "pending"]


class TestSettings:
    @pytest.mark.parametrize(
        ("section", "message"),
        [
            (
                'require_authentication = ["dmarc"]',
                "intake.authserv_id: authserv_id is required with require_authentication",
            ),
            (
                'trusted_requesters = ["cliente.test"]',
                "trusted_requesters needs require_authentication",
            ),
            (
                'allowed_requesters = ["not a domain"]',
                "intake.allowed_requesters: 'not a domain' is neither an address",
            ),
            ('require_authentication = ["arc"]', "intake.require_authentication.0"),
        ],
    )
    def test_unsafe_or_wrong_policy_is_refused(
        self, tmp_path: Path, section: str, message: str
    ) -> None:
        config = tmp_path / "portaria.toml"
        config.write_text(f"[intake]\n{section}\n")

        with pytest.raises(ConfigError) as caught:
            load_settings(config)

        assert message in str(caught.value)

    def test_entries_are_normalised(self) -> None:
        intake = IntakeSettings(
            allowed_requesters=["@Cliente.Test", " Gestora@Outra.Test "],
            require_authentication=["dmarc"],
            authserv_id=" MX.Portaria.Test ",
        )

        assert intake.allowed_requesters == ["cliente.test", "gestora@outra.test"]
        assert intake.authserv_id == OUR_SERVER
