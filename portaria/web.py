"""The web console. For now it serves the page where a new user sets a password,
and the one-click unsubscribe of rule emails.

The link in the welcome email carries a one-time token; the page checks it,
asks for the password twice and hands it to the directory, which stores only
an argon2 hash. Pages are Jinja templates under ``templates/web``.

Rule emails carry ``/unsubscribe/{token}`` (``engine.unsubscribe``). Opening
it (GET) only shows a confirm button, because mail scanners follow links;
the button, or a mail client's one-click POST (RFC 8058), records the
unsubscribe. A token the service did not sign gets a 400 page and changes
nothing.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, Form
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from engine.unsubscribe import (
    InvalidUnsubscribeToken,
    SecretKeyUnavailable,
    is_unsubscribed,
    unsubscribe,
    unsubscribe_links,
)
from portaria.errors import PortariaError
from portaria.wiring import Service
from provisioning.directory import check_token, set_password_with_token
from provisioning.errors import InvalidToken

log = logging.getLogger(__name__)

_pages = Environment(
    loader=FileSystemLoader(str(resources.files("templates").joinpath("web"))),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(name: str, status: int = 200, **context: object) -> HTMLResponse:
    html = _pages.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="Portaria", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return _page("index.html")

    @app.get("/set-password/{token}", response_class=HTMLResponse)
    def set_password_form(token: str) -> HTMLResponse:
        # Say at once that a link is dead, before anyone types a password into it.
        try:
            with service.sessions() as session:
                check_token(session, token)
        except InvalidToken as exc:
            return _page("set_password.html", 410, token="", done=False, error=str(exc))
        return _page("set_password.html", token=token, error=None, done=False)

    @app.post("/set-password/{token}", response_class=HTMLResponse)
    def set_password(
        token: str,
        password: Annotated[str, Form()] = "",
        confirmation: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        if password != confirmation:
            return _page(
                "set_password.html",
                400,
                token=token,
                done=False,
                error="As senhas não conferem. (The passwords do not match.)",
            )
        try:
            with service.transaction() as session:
                user = set_password_with_token(session, token, password)
                email = user.email
        except InvalidToken as exc:
            return _page("set_password.html", 410, token="", done=False, error=str(exc))
        except PortariaError as exc:
            return _page("set_password.html", 400, token=token, done=False, error=str(exc))
        return _page("set_password.html", token="", done=True, error=None, email=email)

    def unsubscribe_address(token: str) -> str | HTMLResponse:
        """The address the link was made for, or the page saying why it cannot be used."""
        try:
            return unsubscribe_links(service.settings).address(token)
        except InvalidUnsubscribeToken as exc:
            log.info("unsubscribe: a link that was not ours was refused")
            return _page("unsubscribe.html", 400, state="invalid", error=str(exc))
        except SecretKeyUnavailable:
            log.error("unsubscribe: no secret key to check links with; run `portaria init`")
            return _page("unsubscribe.html", 503, state="unavailable", error=None)

    @app.get("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe_form(token: str) -> HTMLResponse:
        address = unsubscribe_address(token)
        if isinstance(address, HTMLResponse):
            return address
        with service.sessions() as session:
            done = is_unsubscribed(session, address)
        return _page(
            "unsubscribe.html",
            state="done" if done else "confirm",
            token=token,
            email=address,
            error=None,
        )

    @app.post("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe_confirm(token: str) -> HTMLResponse:
        # The body (the button's form, or RFC 8058's "List-Unsubscribe=One-Click")
        # is not read: the signed token alone says who asked.
        address = unsubscribe_address(token)
        if isinstance(address, HTMLResponse):
            return address
        with service.transaction() as session:
            unsubscribe(session, address, source="link")
        return _page("unsubscribe.html", state="done", email=address, error=None)

    return app
