"""Finding a playbook or a rule the way people refer to it: by id or by name.

Commands, files and rule actions name playbooks and rules by what a person
typed: an id, the exact name, the name in other letter case, or an id
written as text. One order of preference serves them all, so a name that
looks like a number still finds the record so named before the one with that
id.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.models import Playbook, Rule

Named = TypeVar("Named", Playbook, Rule)


def find_by_id_or_name(
    session: Session, model: type[Named], reference: int | str | Named
) -> Named | None:
    """A record given itself, by id, or from text: exact name, name ignoring case, then id."""
    if isinstance(reference, model):
        return reference
    if isinstance(reference, int):
        return session.get(model, reference)
    name = str(reference).strip()
    found = session.scalar(select(model).where(model.name == name))
    if found is None:
        same_letters = func.lower(model.name) == name.lower()
        found = session.scalar(select(model).where(same_letters).limit(1))
    if found is None and name.isdigit():
        found = session.get(model, int(name))
    return found
