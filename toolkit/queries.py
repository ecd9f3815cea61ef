"""Cypher queries by name, from the `.cypher` files shipped as `toolkit.cypher`."""

from __future__ import annotations

import functools
import re
from importlib import resources

from toolkit.errors import ToolkitError


def names() -> list[str]:
    """Every saved query's name (file name without `.cypher`)."""
    root = resources.files("toolkit.cypher")
    return sorted(p.name[: -len(".cypher")] for p in root.iterdir() if p.name.endswith(".cypher"))


@functools.cache
def load(name: str) -> str:
    """The text of query `name`; an unknown name lists the known ones."""
    if name not in names():
        raise ToolkitError(f"no saved query {name!r}; known: {', '.join(names())}")
    return (resources.files("toolkit.cypher") / f"{name}.cypher").read_text()


def statements(name: str) -> list[str]:
    """A multi-statement file (like the schema) split into its statements, comments dropped."""
    lines = [line for line in load(name).splitlines() if not line.strip().startswith("//")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def header(name: str) -> str:
    """The leading comment block: what the query does, its parameters, what it returns."""
    lines = []
    for line in load(name).splitlines():
        if not line.startswith("//"):
            break
        lines.append(line[2:].strip())
    return "\n".join(lines)


INTERNAL = "// Internal:"  # the header line of a step splitcut runs itself


def internal(name: str) -> bool:
    """A write or detection step splitcut runs itself, not a question for people to ask."""
    return any(line.startswith(INTERNAL) for line in load(name).splitlines())


def user_names() -> list[str]:
    """The saved read queries people run (`splitcut query`)."""
    return [name for name in names() if not internal(name)]


def description(name: str) -> str:
    """What the query answers, in one line (its header's `Answers:` line, else its first)."""
    lines = header(name).splitlines()
    return next((line.removeprefix("Answers:").strip() for line in lines
                 if line.startswith("Answers:")), lines[0] if lines else name)


def parameters(name: str) -> list[str]:
    """The parameters the query reads (`$name` outside comments): each must be given."""
    body = "\n".join(line for line in load(name).splitlines()
                     if not line.strip().startswith("//"))
    return sorted(set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", body)))
