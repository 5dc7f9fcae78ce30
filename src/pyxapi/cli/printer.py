"""xe's output layer: records as aligned `name ( RO): value` blocks, plain lines, and the
`--minimal` comma list, byte for byte as xapi's CLI prints them."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

Record = list[tuple[str, str]]


def format_record(record: Record) -> str:
    """The first key is padded on the right, the others on the left, so the colons line up."""
    if not record:
        return "\n"
    width = 4 + max(len(k) for k, _ in record)
    first, *rest = record
    lines = [f"{first[0].ljust(width)}: {first[1]}"]
    lines += [f"{k.rjust(width)}: {v}" for k, v in rest]
    return "\n".join(lines) + "\n"


def escape_commas(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,")


class Printer:
    """Collects nothing in normal mode; in minimal mode keeps values and prints them once."""

    def __init__(self, minimal: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.minimal = minimal
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._buffer: list[str] = []

    def table(self, records: list[Record]) -> None:
        if self.minimal:
            if records and records[0]:
                self._buffer.append(",".join(escape_commas(r[0][1]) if r else "" for r in records))
            return
        for r in records:
            self.out.write(format_record(r) + "\n")

    def lines(self, items: list[str]) -> None:
        if self.minimal:
            self._buffer.append(",".join(escape_commas(s) for s in items))
            return
        for s in items:
            self.out.write(s + "\n")

    def msg(self, text: str) -> None:
        if not self.minimal:
            self.out.write(text + "\n")

    def stderr(self, text: str) -> None:
        if not self.minimal:
            self.err.write(text)
            self.err.flush()

    def flush(self) -> None:
        """End of a successful command: minimal mode prints its one line (even an empty one)."""
        if self.minimal:
            # xapi prepends each printed group, so later groups come first.
            self.out.write(",".join(reversed(self._buffer)) + "\n")
            self._buffer = []
        self.out.flush()
