"""Vocabulary: the words and marks an #ACESSO request is read by, as tables.

This module owns the data of extraction policy and nothing else: the words
that label each field, the kinds of area, the access-type synonyms, the
checkbox marks, the lines that open a quoted or forwarded message and the
closings that start a signature. `intake.fields`, `intake.values` and
`intake.segments` apply these tables; teaching the intake a new word is an
edit here, not in the code that reads.

Keys are folded (lower case, no accents, "e-mail" as "email"), because the
readers compare folded words.

Access-type synonyms map onto comum, agente or admin only when the word
names an access level. Job titles ("gestor", "analista", "coordenador") are
deliberately not mapped: granting a privilege on a guess is worse than
asking the requester, so they leave access_type missing.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ACCESS_PHRASE_MAX_WORDS",
    "ACCESS_SYNONYMS",
    "ACCESS_WORDS",
    "AREA_KINDS",
    "AREA_KIND_OF",
    "CHECKED_INSIDE",
    "CHECKED_SYMBOLS",
    "FIELD_SEPARATORS",
    "FORWARD_MARKERS",
    "FOR_ALL_WORDS",
    "LABEL_FILLERS",
    "LABEL_HEADS",
    "LABEL_WORDS",
    "NAME_PARTICLES",
    "NEGATIONS",
    "PERSON_NOUNS",
    "QUOTED_HEADER_FROM",
    "QUOTED_HEADER_LABELS",
    "QUOTED_HEADER_SUBJECT",
    "REPLY_HEADER_ENDS",
    "REPLY_HEADER_STARTS",
    "SIGNATURE_DELIMITERS",
    "UNCHECKED_SYMBOLS",
    "VALEDICTIONS",
    "AccessType",
]

AccessType = Literal["comum", "agente", "admin"]

# Label head words: each names the field a label is for. Requests come in
# Portuguese and English, from forms and from free text, so both are here.
LABEL_WORDS: dict[str, tuple[str, ...]] = {
    "name": ("nome", "name", "fullname", "sobrenome"),
    "email": ("email", "mail"),
    "area": (
        "area", "areas", "setor", "departamento", "depto", "unidade", "segmento",
        "diretoria", "gerencia", "coordenacao", "equipe", "time", "filial", "regional",
        "lotacao", "divisao", "department", "dept", "unit", "team", "segment", "sector",
        "division", "branch",
    ),
    "access_type": (
        "acesso", "access", "perfil", "profile", "role", "permissao", "permissoes",
        "permission", "permissions", "nivel", "level", "tipo", "type", "papel",
    ),
}  # fmt: skip

# Kinds of area label. A kind repeated means the next person; different kinds
# (a unit, then a segment) are parts of one area, joined with " / ".
AREA_KINDS: dict[str, tuple[str, ...]] = {
    "unit": ("unidade", "unit", "filial", "regional", "branch"),
    "segment": ("segmento", "segment"),
    "team": ("equipe", "time", "team"),
    "department": (
        "setor", "departamento", "depto", "department", "dept", "sector", "diretoria",
        "gerencia", "coordenacao", "division", "divisao", "lotacao",
    ),
}  # fmt: skip

# Words a label may carry without changing the field it names.
LABEL_FILLERS = frozenset(
    {
        "a", "o", "as", "os", "da", "do", "das", "dos", "de", "e", "ou", "em", "no", "na",
        "para", "com", "cada", "of", "the", "for", "or", "and", "to", "in", "your", "with",
        "each", "per", "novo", "nova", "new", "completo", "completa", "full", "corporativo",
        "corporativa", "corporate", "work", "institucional", "profissional", "comercial",
        "endereco", "address", "eletronico", "solicitado", "solicitada", "requested",
        "desejado", "desejada", "desired", "sistema", "plataforma", "platform", "conta",
        "account", "negocio", "negocios", "business", "atuacao", "principal", "primary",
        "sua", "seu", "his", "her", "their", "membro", "member",
    }
)  # fmt: skip

# A label of only these (and fillers) names the person: "Colaborador: Ana".
PERSON_NOUNS = frozenset(
    {
        "pessoa", "usuario", "usuaria", "colaborador", "colaboradora", "funcionario",
        "funcionaria", "user", "person", "employee",
    }
)  # fmt: skip

# Words that make a field apply to every person: "Perfil para todos: Comum".
FOR_ALL_WORDS = frozenset({"todos", "todas", "all", "everyone", "everybody", "geral"})

# Lower-case words that still belong in a person's name.
NAME_PARTICLES = frozenset({"de", "da", "do", "das", "dos", "e", "del", "di", "van", "von", "der"})

# Access-type words and phrases. Job titles ("gestor", "analista",
# "coordenador") are deliberately absent: see the module docstring.
ACCESS_WORDS: dict[AccessType, tuple[str, ...]] = {
    "comum": (
        "comum", "common", "viewer", "view", "visualizacao", "visualizador", "visualizadora",
        "visualizar", "leitura", "readonly", "read only", "consulta", "basico", "basic",
        "padrao", "standard", "regular", "observador", "observer",
    ),
    "agente": ("agente", "agent", "operador", "operadora", "operator"),
    "admin": (
        "admin", "adm", "administrador", "administradora", "administrator", "administrativo",
        "administrativa", "administrativos", "administrativas", "administracao",
    ),
}  # fmt: skip

# A synonym right after one of these does not count: "Comum, não admin".
NEGATIONS = frozenset({"nao", "not", "no", "sem", "without", "nunca", "never", "exceto"})

# Lookups derived from the tables above: one dictionary look-up per word.
LABEL_HEADS = {word: field for field, words in LABEL_WORDS.items() for word in words}
AREA_KIND_OF = {word: kind for kind, words in AREA_KINDS.items() for word in words}
ACCESS_SYNONYMS = {
    tuple(phrase.split()): access for access, phrases in ACCESS_WORDS.items() for phrase in phrases
}
ACCESS_PHRASE_MAX_WORDS = max(len(words) for words in ACCESS_SYNONYMS)

# Checkbox marks: checked ones select their option, unchecked ones do not.
# Inside brackets or parentheses: "[x]", "(X)", "[✔]"; empty ones are unchecked.
CHECKED_INSIDE = frozenset({"x", "X", "✓", "✔", "*", "•"})
CHECKED_SYMBOLS = frozenset("☒☑✓✔✅■▣◉●")
UNCHECKED_SYMBOLS = frozenset("☐□○◯")

# Lines that open a forwarded or quoted message, folded and stripped of the
# dashes, underscores and spaces around them, as the mail clients of our
# requesters write them (Portuguese, English, Spanish, French).
FORWARD_MARKERS = frozenset(
    {
        "mensagem original",
        "original message",
        "mensagem encaminhada",
        "forwarded message",
        "mensagem reencaminhada",
        "begin forwarded message:",
        "inicio da mensagem encaminhada:",
        "inicio da mensagem reencaminhada:",
        "forwarded message follows",
        "message transfere",
        "mensaje original",
        "mensaje reenviado",
    }
)
# A reply header: starts with one of these and ends with one of those.
REPLY_HEADER_STARTS = ("em ", "on ", "no dia ", "el ", "le ", "am ")
REPLY_HEADER_ENDS = ("escreveu:", "wrote:", "escribio:", "a ecrit :", "a ecrit:", "schrieb:")
# Labels of the header block of a forwarded or quoted message (folded).
QUOTED_HEADER_LABELS = frozenset(
    {
        "de", "from", "enviado", "enviada", "enviado em", "enviada em", "sent", "data",
        "date", "para", "to", "cc", "cco", "bcc", "assunto", "subject", "importancia",
        "importance", "anexos", "attachments", "responder a", "reply-to",
    }
)  # fmt: skip
QUOTED_HEADER_FROM = frozenset({"de", "from"})
QUOTED_HEADER_SUBJECT = frozenset({"assunto", "subject"})

# Closings that end the author's text; the signature follows (folded,
# without trailing punctuation).
VALEDICTIONS = frozenset(
    {
        "att", "att.", "atte", "atenciosamente", "cordialmente", "obrigado", "obrigada",
        "obrigado a todos", "obrigada a todos", "muito obrigado", "muito obrigada",
        "grato", "grata", "abracos", "abraco", "abs", "um abraco", "sds", "saudacoes",
        "at.te", "agradeco", "desde ja agradeco", "no aguardo", "fico no aguardo",
        "regards", "best regards", "kind regards", "best", "thanks", "thank you",
        "many thanks", "cheers", "sincerely",
    }
)  # fmt: skip
SIGNATURE_DELIMITERS = frozenset({"--", "-- "})

# Separators of several fields on one line, and of unlabelled row cells.
FIELD_SEPARATORS = frozenset(";|\t")
