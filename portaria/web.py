"""The web console. For now it serves the page where a new user sets a password.

The link in the welcome email carries a one-time token; the page checks it,
asks for the password twice and hands it to the directory, which stores only
an argon2 hash. Pages are Jinja templates under ``templates/web``.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, Form
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

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

    return app
