#!/usr/bin/env bash
# Set up and run the whole test suite: lint, then pytest against real servers
# (Dovecot IMAP and aiosmtpd SMTP, started by fixtures on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests start their own Dovecot and PostgreSQL servers; install them when missing.
missing=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing ${missing[*]} (the tests run real servers)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' first" >&2
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
