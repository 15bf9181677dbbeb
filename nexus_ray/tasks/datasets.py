"""Problem sets: a JSONL loader for any ``problem``/``answer`` dataset and the built-in arith sets.

The JSONL schema is MATH-500's: one object per line with ``problem`` and ``answer`` (strings)
and an optional ``level``. Built-in sets ship inside the package and are regenerated
byte-for-byte by ``python -m nexus_ray.tasks.datasets``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nexus_ray.tasks import arith, mathchat

DATA_DIR = Path(__file__).parent / "data"

# name -> (size, seed) of the built-in arithmetic sets; spread evenly over the five levels.
BUILTIN_SETS: dict[str, tuple[int, int]] = {"arith-calib": (500, 1001), "arith-test": (500, 2002)}
# name -> (size, seed) of the chat pair's free-form sets (MATH-500's schema, LaTeX answers).
CHAT_SETS: dict[str, tuple[int, int]] = {"chat-calib": (500, 3003), "chat-test": (500, 4004)}


@dataclass(frozen=True)
class Example:
    problem: str
    answer: str
    level: int | None = None


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and line."""


def load_jsonl(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    examples = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{lineno}: each line is a JSON object with 'problem' and 'answer'")
        missing = [key for key in ("problem", "answer") if key not in row]
        if missing:
            raise DatasetError(f"{path}:{lineno}: no {' or '.join(repr(k) for k in missing)} field")
        level = row.get("level")
        examples.append(
            Example(str(row["problem"]), str(row["answer"]), int(level) if level is not None else None)
        )
    if not examples:
        raise DatasetError(f"{path}: no examples")
    return examples


def load(name_or_path: str) -> list[Example]:
    """A built-in set by name (``arith-test``, ``chat-test``, ...) or any JSONL file by path."""
    if name_or_path in BUILTIN_SETS or name_or_path in CHAT_SETS:
        return load_jsonl(DATA_DIR / f"{name_or_path}.jsonl")
    if not Path(name_or_path).exists():
        known = ", ".join([*BUILTIN_SETS, *CHAT_SETS])
        raise DatasetError(f"unknown dataset {name_or_path!r}: give a JSONL path or one of {known}")
    return load_jsonl(name_or_path)


def builtin_problems(name: str) -> list[arith.Problem]:
    size, seed = BUILTIN_SETS[name]
    return arith.generate_set(size, seed)


def heldout_expressions() -> set[str]:
    """Every expression of the built-in sets, which zoo training must never see."""
    return {p.expression for name in BUILTIN_SETS for p in builtin_problems(name)}


def builtin_chat_problems(name: str) -> list[mathchat.ChatProblem]:
    size, seed = CHAT_SETS[name]
    return mathchat.generate_set(size, seed)


def heldout_chat_problems() -> set[str]:
    """Every problem text of the chat sets, which the chat pair's training must never see."""
    return {p.problem for name in CHAT_SETS for p in builtin_chat_problems(name)}


def write_builtin_sets() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name in BUILTIN_SETS:
        rows = [
            json.dumps({"problem": p.expression, "answer": p.answer, "level": p.level})
            for p in builtin_problems(name)
        ]
        (DATA_DIR / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    for name in CHAT_SETS:
        rows = [
            json.dumps(
                {
                    "problem": p.problem,
                    "solution": p.solution,
                    "answer": p.answer,
                    "subject": p.kind,
                    "level": p.level,
                    "unique_id": f"{name}/{i}",
                }
            )
            for i, p in enumerate(builtin_chat_problems(name))
        ]
        (DATA_DIR / f"{name}.jsonl").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    write_builtin_sets()
