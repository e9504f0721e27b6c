"""Parse JSONL documents (one JSON object per line) and account for bad lines.

A line is *bad* when it is not UTF-8, not a JSON object, or lacks one of the wanted keys (or its
value is not a string). Blank lines are ignored. Line numbers are 1-based, as in an editor; a
Parquet row is numbered the same way.
"""

import dataclasses
import json
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from megatron_patch.errors import ArgumentError

NOT_UTF8 = "not UTF-8"
NOT_JSON = "not JSON"
NOT_OBJECT = "not a JSON object"
MISSING_KEY = "missing key"
NOT_STRING = "value is not a string"
ON_BAD_LINE_CHOICES = ("fail", "skip")
SKIP_HINT = "pass --on-bad-line skip to skip bad lines and report them"


class BadLineError(ArgumentError):
    """Raised on the first bad line when bad lines are not skipped (bad input: one ``error:`` line)."""


def parse_record(raw: bytes) -> Tuple[Optional[dict], Optional[str]]:
    """One raw JSONL line -> ``(record, None)``, ``(None, reason)`` if bad, ``(None, None)`` if blank."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, NOT_UTF8
    if not line.strip():
        return None, None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None, NOT_JSON
    if not isinstance(record, dict):
        return None, NOT_OBJECT
    return record, None


def select_texts(record: dict, keys: Sequence[str]) -> Tuple[Optional[Dict[str, str]], Optional[str]]:
    """``record``'s text under each key -> ``(texts, None)``, or ``(None, reason)``."""
    texts = {}
    for key in keys:
        if key not in record:
            return None, f"{MISSING_KEY} '{key}'"
        if not isinstance(record[key], str):
            return None, f"{NOT_STRING} ('{key}')"
        texts[key] = record[key]
    return texts, None


def item_texts(item, select: Callable[[dict], tuple]) -> Tuple[Optional[Dict[str, str]], Optional[str]]:
    """One raw JSONL line (bytes) or Parquet row (dict) -> ``(texts, None)``, ``(None, reason)`` if bad,
    ``(None, None)`` if blank; ``select`` picks the texts of a parsed record (see :func:`select_texts`)."""
    record, reason = parse_record(item) if isinstance(item, bytes) else (item, None)
    if record is None:
        return None, reason
    return select(record)


@dataclasses.dataclass
class BadLineReport:
    """Counts bad lines by reason and keeps the first ``max_examples`` places (``file:line``)."""

    path: str
    max_examples: int = 20
    counts: Counter = dataclasses.field(default_factory=Counter)
    examples: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, line_number: int, reason: str, on_bad_line: str, path: Optional[str] = None) -> None:
        """Record a bad line of ``path`` (default: the report's); raise :class:`BadLineError` unless skipping."""
        place = f"{path or self.path}:{line_number}"
        if on_bad_line != "skip":
            raise BadLineError(f"{place}: bad line ({reason}); fix the file, or {SKIP_HINT}")
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((place, reason))

    def summary(self) -> str:
        """One line: how many bad lines, why, and where the first ones are."""
        if not self.total:
            return f"{self.path}: no bad lines"
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.counts.items()))
        where = ", ".join(f"{place} ({reason})" for place, reason in self.examples)
        more = " ..." if self.total > len(self.examples) else ""
        return f"{self.path}: skipped {self.total} bad lines ({reasons}); lines: {where}{more}"
