"""Robustness on the shared corpus of real-world mail (see corpus/MANIFEST.md).

The corpus sits next to the repository and is never copied into it; these
tests skip when it is absent.

1. Every complete message is read, screened, extracted and reported without
   an exception other than UnreadableMessage, which only the known
   non-messages may raise.
2. Our decoded subject and From address agree with the values the corpus
   ships for zammad (mailNNN.yml) and imap_tools (*.expected.json) on at
   least AGREEMENT_FLOOR of the 197 messages. Whitespace runs compare as one
   space and addresses compare case-insensitively. Every disagreement is
   printed, and each must be one KNOWN_DISAGREEMENTS explains: there our
   reading is the right one and the shipped value is not.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from intake.errors import UnreadableMessage
from intake.extraction import extract
from intake.reading import read_message
from intake.report import parse_report
from intake.screening import screen

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

# Folders of body-only fragments, not RFC 822 messages (MANIFEST.md).
BODY_ONLY = (
    "crisp-email-forward-parser/",
    "crisp-email-reply-parser/",
    "mail-parser-reply/",
    "talon/signature/",
    "talon/html_replies/",
)
EXPECTED_VALUE_SUFFIXES = (".yml", ".json", ".md", "_reply_text", "COPYING", "LICENSE.txt")

# Files among the complete-message folders that are not messages at all.
NOT_MESSAGES = frozenset(
    {
        "cpython-test_email/msg_19.txt",  # a Mailman digest body without headers
        "enmime/mail/erroneous.raw",
        "horde-mime/bug12842_b.txt",  # a MIME part without message headers
        "horde-mime/flowed_msg.txt",
        "horde-mime/mime_part_v1.txt",
        "horde-mime/uudecode.txt",
        "james-mime4j/mimetools-testmsgs/README.txt",
        "james-mime4j/testmsgs/malformedHeader-noheader.msg",
        "james-mime4j/testmsgs/malformedHeaderStartsBody-noheader.msg",
        "request-tracker/lorem-ipsum",
        "spamscope-mail-parser/mail_outlook_1",  # an Outlook .msg (OLE) file
    }
)

# Where we read a message differently from the shipped expectation, and why
# our reading is the right one. The test fails on any disagreement not listed
# here, and says so when a listed one agrees again.
KNOWN_DISAGREEMENTS = {
    "zammad/mail018.box": (
        "the Subject's encoded word is UTF-7 (unicode-1-1-utf-7) and is folded over two "
        "lines; we decode it to 'Übermittlungsstatus', zammad kept the raw '+ANw-'"
    ),
    "zammad/mail076.box": (
        "From is '\"Millions Lottery Spain transfer\"@example.com>': the trailing '>' closes "
        "nothing and is no part of the address, which the expectation keeps"
    ),
    "zammad/mail087.box": (
        "From is 'Test test@example.com' without angle brackets: the address is the word "
        "with the @, and 'Test' the name; the expectation takes the whole value"
    ),
    "imap_tools/plain_emails/mix_caps_content_type.eml": (
        "From is 'Big Bug bb@bug.com' without angle brackets; as for zammad/mail087"
    ),
    "imap_tools/error_emails/invalid_subject_characters.eml": (
        "the Subject holds raw 8-bit Latin-1 letters; Python's email drops them "
        "('Formao'), we keep them ('Formação')"
    ),
    "imap_tools/rfc2822/example13.eml": (
        "obsolete 'From  :' and 'Subject     :' with spaces before the colon, which "
        "RFC 5322 4.5 still allows; Python's email does not read them as fields at all"
    ),
    "imap_tools/rfc2822/example14.eml": (
        "RFC 2047 6.2 drops white space only between two encoded words; between the text "
        "'TEST' and the first encoded word it stays, which Python's email drops"
    ),
    "imap_tools/plain_emails/raw_email_incorrect_header.eml": (
        "a junk line ('quite Delivered-To: ...') inside the header block: we read on to "
        "From and Subject, as zammad/mail054 and mail068 need; Python's email starts the "
        "body at the junk line and finds neither"
    ),
}
AGREEMENT_FLOOR = 189


def complete_messages() -> list[Path]:
    found = []
    for path in sorted(CORPUS.rglob("*")):
        relative = path.relative_to(CORPUS).as_posix()
        if not path.is_file() or relative.startswith(BODY_ONLY):
            continue
        if relative.startswith("talon/") and relative.endswith(".html"):
            continue
        if relative.endswith(EXPECTED_VALUE_SUFFIXES) or "_decoded" in relative:
            continue
        if relative.startswith("talon/signature") or relative.endswith(
            ("_body", "_sender", "_signature")
        ):
            continue
        found.append(path)
    return found


needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"shared corpus not found at {CORPUS}"
)


@needs_corpus
def test_every_message_reads_screens_extracts_and_reports() -> None:
    failures: list[str] = []
    unreadable: set[str] = set()
    paths = complete_messages()
    for path in paths:
        relative = path.relative_to(CORPUS).as_posix()
        raw = path.read_bytes()
        try:
            message = read_message(raw)
        except UnreadableMessage:
            unreadable.add(relative)
            continue
        except Exception as error:
            failures.append(f"{relative}: read_message raised {error!r}")
            continue
        for stage, run in (
            ("screen", lambda m=message: screen(m)),
            ("extract", lambda m=message: extract(m)),
            ("parse_report", lambda r=raw: parse_report(r)),
        ):
            try:
                run()
            except Exception as error:
                failures.append(f"{relative}: {stage} raised {error!r}")
    print(f"corpus: {len(paths)} files, {len(unreadable)} unreadable")
    assert len(paths) > 1000
    assert not failures, "\n".join(failures)
    assert unreadable == NOT_MESSAGES


def _ruby_yaml_loader():
    yaml = pytest.importorskip("yaml")

    class RubyTaggedLoader(yaml.SafeLoader):
        """Reads zammad's Ruby-tagged YAML as plain mappings and strings."""

    def ruby_object(loader, _suffix, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    RubyTaggedLoader.add_multi_constructor("!ruby/", ruby_object)
    RubyTaggedLoader.add_constructor(
        "!binary", lambda loader, node: base64.b64decode(loader.construct_scalar(node))
    )
    return yaml, RubyTaggedLoader


def _expectations() -> list[tuple[Path, dict[str, str]]]:
    """(message path, {"subject": ..., "from": ...}) for each expected-value file."""
    yaml, loader = _ruby_yaml_loader()
    cases = []
    for data_file in sorted((CORPUS / "zammad").glob("mail*.yml")):
        data = yaml.load(data_file.read_text(encoding="utf-8"), Loader=loader)
        wanted = {}
        if "subject" in data:
            wanted["subject"] = data["subject"]
        if "from_email" in data:
            wanted["from"] = data["from_email"]
        cases.append((data_file.with_suffix(".box"), wanted))
    for data_file in sorted((CORPUS / "imap_tools").rglob("*.expected.json")):
        data = json.loads(data_file.read_text(encoding="utf-8"))["expected"]
        message = data_file.with_name(data_file.name.replace(".expected.json", ".eml"))
        cases.append((message, {"subject": data["subject"], "from": data["from_"]}))
    return cases


def _same(key: str, got: str, expected: object) -> bool:
    text = expected.decode("utf-8", "replace") if isinstance(expected, bytes) else expected
    got, wanted = (re.sub(r"\s+", " ", str(v or "")).strip() for v in (got, text))
    return got.casefold() == wanted.casefold() if key == "from" else got == wanted


@needs_corpus
def test_subject_and_from_agree_with_shipped_expectations() -> None:
    cases = _expectations()
    disagreements: dict[str, str] = {}
    for path, wanted in cases:
        message = read_message(path.read_bytes())
        got = {"subject": message.subject, "from": message.from_address}
        wrong = [
            f"{key} {got[key]!r}, expected {value!r}"
            for key, value in wanted.items()
            if not _same(key, got[key], value)
        ]
        if wrong:
            disagreements[path.relative_to(CORPUS).as_posix()] = "; ".join(wrong)
    agreeing = len(cases) - len(disagreements)
    print(f"corpus header agreement: {agreeing}/{len(cases)}")
    for relative, wrong in sorted(disagreements.items()):
        why = KNOWN_DISAGREEMENTS.get(relative, "NOT EXPLAINED")
        print(f"  {relative}: {wrong}\n    why: {why}")

    unexplained = sorted(set(disagreements) - set(KNOWN_DISAGREEMENTS))
    agreeing_again = sorted(set(KNOWN_DISAGREEMENTS) - set(disagreements))
    assert not unexplained, "new disagreements:\n" + "\n".join(
        f"{relative}: {disagreements[relative]}" for relative in unexplained
    )
    assert not agreeing_again, (
        f"these agree now; take them off KNOWN_DISAGREEMENTS: {agreeing_again}"
    )
    assert agreeing >= AGREEMENT_FLOOR
