#!/usr/bin/env bash
# Set up Portaria on its embedded defaults (SQLite, local Maildir in and out) and run the
# main job on the sample #ACESSO messages in samples/. No server needed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e . 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
portaria=.venv/bin/portaria

"$portaria" init

inbox=$(.venv/bin/python -c 'from config.settings import load_settings as l; s = l(); print(s.path(s.mailbox.maildir))')
mkdir -p "$inbox/new" "$inbox/cur" "$inbox/tmp"
for sample in samples/*.eml; do
    # Maildir delivery: write under tmp/, then rename into new/ so a reader never sees half a file.
    name="$(date +%s).$(basename "$sample" .eml).$(hostname)"
    cp "$sample" "$inbox/tmp/$name"
    mv "$inbox/tmp/$name" "$inbox/new/$name"
done
echo "delivered $(ls samples/*.eml | wc -l) sample messages to $inbox/new"

echo
"$portaria" poll --once
echo
"$portaria" requests list
echo
echo "Próximos passos (next steps):"
while IFS='|' read -r command meaning; do
    printf '  %-52s # %s\n' "$portaria $command" "$meaning"
done <<'TXT'
requests show 1|ver um pedido (one request, in full)
requests approve 1 2|aprovar: cria as contas (approve: creates the accounts)
requests approve --all-pending|aprovar todos os pendentes (approve every pending one)
requests reject 3 --reason "..."|recusar com motivo (reject with a reason)
outbox send|enviar os e-mails, para var/mail/outbox (send the emails)
users list|usuários criados (the users directory)
TXT
