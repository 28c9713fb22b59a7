"""The base of every wire and config model (frozen, unknown fields refused) and the one way we
turn a pydantic ValidationError into a message an operator can act on."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.redaction import Redactor, is_secret_key

__all__ = ["Model", "describe_validation_error"]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def describe_validation_error(exc: ValidationError, env_prefix: str = "", limit: int = 8) -> str:
    """One clause per problem, `where: what was wrong (got ...)`; inputs under secret-named
    fields are never echoed and the rest pass the redactor."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        if env_prefix and where.isidentifier() and where.islower():
            where = f"{env_prefix}{where.upper()}"
        got = err.get("input")
        hidden = isinstance(got, dict | list) or got is None or is_secret_key(where)
        shown = "" if hidden else f" (got {Redactor().clip(str(got), 60)!r})"
        parts.append(f"{where}: {err['msg']}{shown}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)
