"""OAuth2 access tokens for mailbox and SMTP logins (SASL XOAUTH2).

This module owns getting a current access token from where the settings
say (a file another tool keeps fresh, or a command that prints one) and
shaping the XOAUTH2 initial client response. It never stores a token:
provider tokens expire after about an hour, so every login reads a new one.

A token is a password in all but name: it never appears in a log line or
an error message. A failing command is described by its program name and
exit status; its arguments are left out too, since they may carry a client
secret.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

from config.settings import OAuth2Settings
from portaria.errors import PortariaError

log = logging.getLogger(__name__)

# How much of a failing command's standard error is quoted back to a person.
STDERR_QUOTE_LIMIT = 300


class AccessTokenUnavailable(PortariaError):
    """No usable access token could be read; the message names the setting to check."""


def read_access_token(
    oauth2: OAuth2Settings | None, resolve: Callable[[Path], Path], *, key: str
) -> str:
    """A current access token from ``oauth2.token_file`` or ``oauth2.token_command``.

    ``key`` is where these settings live (``mailbox.oauth2`` or
    ``outbound.oauth2``), for error messages; ``resolve`` anchors a relative
    token file at the configuration folder.
    """
    if oauth2 is None or (oauth2.token_file is None and oauth2.token_command is None):
        raise AccessTokenUnavailable(
            f"{key}: no token source; set {key}.token_command or {key}.token_file"
        )
    if oauth2.token_file is not None:
        token = _token_from_file(resolve(oauth2.token_file), key)
    else:
        token = _token_from_command(oauth2.token_command or "", oauth2.command_timeout, key)
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        # XOAUTH2 separates its fields with \x01; anything but the bare token
        # (a JSON document, two lines) would corrupt the login.
        raise AccessTokenUnavailable(
            f"{key}: the token source must give only the access token, on one line"
        )
    return token


def xoauth2_response(username: str, token: str) -> str:
    """The XOAUTH2 initial client response: ``user=U^Aauth=Bearer T^A^A`` (not yet base64)."""
    return f"user={username}\x01auth=Bearer {token}\x01\x01"


def _token_from_file(path: Path, key: str) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AccessTokenUnavailable(
            f"{key}.token_file: cannot read {path}: {exc.strerror or exc}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise AccessTokenUnavailable(f"{key}.token_file: {path} is not UTF-8 text") from exc
    if not token:
        raise AccessTokenUnavailable(
            f"{key}.token_file: {path} is empty; is the tool that refreshes it running?"
        )
    log.debug("%s: access token read from %s", key, path)
    return token


def _token_from_command(command: str, timeout: float, key: str) -> str:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise AccessTokenUnavailable(f"{key}.token_command: cannot be split: {exc}") from exc
    if not argv:
        raise AccessTokenUnavailable(f"{key}.token_command is empty")
    program = argv[0]
    try:
        # No shell: the command line is the settings' words, not a script.
        finished = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AccessTokenUnavailable(
            f"{key}.token_command: {program!r} did not finish within {timeout:g} s"
        ) from exc
    except OSError as exc:
        raise AccessTokenUnavailable(
            f"{key}.token_command: cannot run {program!r}: {exc.strerror or exc}"
        ) from exc

    token = finished.stdout.decode("utf-8", errors="replace").strip()
    if finished.returncode != 0:
        said = _last_line(finished.stderr, hide=token)
        raise AccessTokenUnavailable(
            f"{key}.token_command: {program!r} exited with status {finished.returncode}"
            + (f" ({said})" if said else "")
        )
    if not token:
        raise AccessTokenUnavailable(
            f"{key}.token_command: {program!r} printed no token on its standard output"
        )
    log.debug("%s: access token read from the output of %r", key, program)
    return token


def _last_line(stderr: bytes, *, hide: str) -> str:
    """The last line a failing command wrote on stderr: usually the reason, e.g. "expired".

    Whatever it printed on stdout is cut out of it, in case a tool echoes a
    token there too.
    """
    lines = [line.strip() for line in stderr.decode("utf-8", errors="replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    if hide:
        last = last.replace(hide, "[token]")
    return last[:STDERR_QUOTE_LIMIT]
