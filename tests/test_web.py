"""The set-password page the welcome email links to."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from portaria.web import create_app
from portaria.wiring import Service
from provisioning.directory import create_user, issue_set_password_token, verify_password
from provisioning.models import User


def new_user_link(service: Service) -> str:
    with service.transaction() as session:
        user = create_user(
            session, name="Ana", email="ana@x.test", area="RH", role="comum", created_via="test"
        )
        return issue_set_password_token(session, user, ttl_hours=1).token


def test_link_sets_an_argon2_password_once(service: Service) -> None:
    token = new_user_link(service)
    client = TestClient(create_app(service))

    page = client.get(f"/set-password/{token}")
    assert page.status_code == 200 and "Defina sua senha" in page.text

    done = client.post(
        f"/set-password/{token}",
        data={"password": "correct horse battery", "confirmation": "correct horse battery"},
    )
    assert done.status_code == 200 and "Senha definida" in done.text
    with service.sessions() as session:
        user = session.scalar(select(User))
    assert user.password_hash.startswith("$argon2")
    assert verify_password(user, "correct horse battery")
    assert not verify_password(user, "wrong password!")

    again = client.post(
        f"/set-password/{token}",
        data={"password": "another password", "confirmation": "another password"},
    )
    assert again.status_code == 410 and "já foi usado" in again.text
    dead = client.get(f"/set-password/{token}")
    assert dead.status_code == 410 and "<form" not in dead.text


def test_mismatch_and_short_passwords_are_refused(service: Service) -> None:
    token = new_user_link(service)
    client = TestClient(create_app(service))

    mismatch = client.post(
        f"/set-password/{token}", data={"password": "aaaaaaaaaaaa", "confirmation": "bbbbbbbbbbbb"}
    )
    short = client.post(f"/set-password/{token}", data={"password": "abc", "confirmation": "abc"})

    assert mismatch.status_code == 400 and "não conferem" in mismatch.text
    assert short.status_code == 400 and "at least 10" in short.text
    with service.sessions() as session:
        assert session.scalar(select(User)).password_hash is None


def test_unknown_token_is_refused_and_escaped(service: Service) -> None:
    client = TestClient(create_app(service))

    page = client.post(
        "/set-password/<script>x", data={"password": "a" * 12, "confirmation": "a" * 12}
    )

    assert page.status_code == 410
    assert "<script>x" not in page.text


def test_missing_fields_get_a_page_not_a_json_error(service: Service) -> None:
    token = new_user_link(service)
    client = TestClient(create_app(service))

    page = client.post(f"/set-password/{token}", data={"password": "a" * 12})

    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert "não conferem" in page.text
    assert client.get("/").status_code == 200
