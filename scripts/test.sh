#!/usr/bin/env bash
# Set up and run the whole test suite: lint, then pytest against real servers
# (Dovecot IMAP and aiosmtpd SMTP, started by fixtures on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dovecot >/dev/null 2>&1 && [ ! -x /usr/sbin/dovecot ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing dovecot-imapd (the IMAP tests need a real Dovecot)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null
    else
        echo "dovecot is missing: run 'sudo apt-get install -y dovecot-imapd' first" >&2
        [ "${CI:-}" = true ] && exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pytest "$@"
