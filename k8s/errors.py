"""One format for every error the checks report: ``key.path[0].key: message``."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

Loc = tuple[str | int, ...]


def dotted(loc: Sequence[str | int]) -> str:
    """``("spec", "workerGroupSpecs", 0, "replicas")`` -> ``spec.workerGroupSpecs[0].replicas``.

    Keys with a dot (``nvidia.com/gpu``) are bracketed so the path stays unambiguous.
    """
    path = ""
    for part in loc:
        if isinstance(part, int) or "." in part:
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "<root>"


def pydantic_errors(err: ValidationError, at: Loc = ()) -> list[str]:
    """One line per pydantic error, its path under ``at``, in the checks' own words."""
    lines = []
    for e in err.errors():
        if e["type"] == "extra_forbidden":
            message = "unknown field"
        elif e["type"] == "missing":
            message = "missing required field"
        elif e["type"] == "value_error":
            message = str(e["ctx"]["error"])
        else:
            message = f"{e['msg']} (got {type(e['input']).__name__} {_short(e['input'])})"
        lines.append(f"{dotted((*at, *e['loc']))}: {message}")
    return lines


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
