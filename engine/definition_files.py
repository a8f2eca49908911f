"""Definition files: the TOML and YAML files playbooks and rules travel in.

This module owns what playbook files and rule files share: the format, by
extension (``.toml``, ``.yaml`` or ``.yml``); reading a file as UTF-8 into
plain data; writing plain data back as TOML values or a YAML document; and
the report of an import. What a file must hold belongs to ``engine.playbooks``
and ``engine.rule_files``, and so does the error a wrong file raises: each
passes its own (:data:`Refusal`), so a bad playbook file is an
``InvalidPlaybook`` and a bad rule file an ``InvalidRule``.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from engine.errors import EngineError

# Builds the error for a file that cannot be used: the message, then one line
# per problem for those errors that list them.
Refusal = Callable[[str, list[str]], EngineError]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class DefinitionImportReport:
    """The names an import created and the names it replaced."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


def file_format(path: Path, refusal: Refusal) -> str:
    """``toml`` or ``yaml``, from the file's extension."""
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return "toml"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    raise refusal(
        f"formato desconhecido (unknown format) {path.name}: use .toml, .yaml ou .yml",
        [f"{path.name}: .toml, .yaml ou .yml"],
    )


def read_definition_file(file: Path, refusal: Refusal) -> Any:
    """The plain data a TOML or YAML file holds; a file that cannot be read is refused."""
    kind = file_format(file, refusal)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise refusal(f"não foi possível ler (cannot read) {file}: {exc.strerror}", []) from exc
    except UnicodeDecodeError:
        raise refusal(f"{file.name}: o arquivo precisa ser UTF-8 (must be UTF-8)", []) from None
    if kind == "toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise refusal(f"{file.name}: TOML inválido (bad TOML): {exc}", []) from None
    yaml = _yaml()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (linha {mark.line + 1})" if mark is not None else ""
        raise refusal(f"{file.name}: YAML inválido (bad YAML){at}", []) from None


def plain_data(value: Any) -> Any:
    """Any mappings within ``value`` as dicts, copied: what a file writer accepts."""
    if isinstance(value, Mapping):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    return value


def yaml_document(data: Any) -> str:
    """Plain data as YAML text, keys in the order given and letters as written."""
    return str(_yaml().safe_dump(data, allow_unicode=True, sort_keys=False))


def toml_pair(key: str, value: Any) -> str:
    """One ``key = value`` line of TOML."""
    return f"{toml_key(key)} = {toml_value(value)}"


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    """A TOML value for plain data; a missing value inside a table is an empty string."""
    # A JSON string is a valid TOML basic string, escapes included.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, Mapping):
        inner = ", ".join(
            f"{toml_key(str(k))} = {toml_value('' if v is None else v)}" for k, v in value.items()
        )
        return "{ " + inner + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, date):
        return json.dumps(value.isoformat())
    return json.dumps(str(value), ensure_ascii=False)


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as exc:  # pyyaml is optional; TOML always works
        raise EngineError(
            "arquivos YAML precisam do pacote pyyaml (YAML needs pyyaml): pip install pyyaml"
        ) from exc
    return yaml
