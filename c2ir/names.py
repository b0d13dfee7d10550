"""User-controlled strings on their way into files, logs and file names: neutralised, recoverable.

Why: image file names, OOD set names and detector names come from the user's folders and
configs, and reach `scores.csv`, `skipped.txt`, log lines, report PNG names and HTML. A name
with a newline forges log lines, one starting with `=` runs as a spreadsheet formula, one
with `../` writes outside the run directory. Every function here is pure and total.

- `escape_name` / `unescape_name`: a bijective, printable form (backslash escapes for
  control, format, separator and undecodable characters, and for the backslash itself).
- `csv_cell` / `csv_uncell`: `escape_name` plus OWASP's CSV-injection rule: a cell that
  begins with `=`, `+`, `-`, `@`, tab or CR gets a leading `'`; a leading `'` is doubled so
  the original stays recoverable.
- `safe_filename`: one path component with no separators, no `..`, no control characters.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP CSV injection: characters a spreadsheet evaluates


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch == "\\":
        return "\\\\"
    if ch.isprintable() or ch == " ":
        return ch
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_name(name: Any) -> str:
    """`name` (str or path) with every non-printable character (control characters such as `\\n`
    and `\\r`, Unicode format characters such as the right-to-left override, line separators,
    undecodable bytes kept as surrogates) written as `\\xNN` / `\\uNNNN` / `\\UNNNNNNNN`, and `\\`
    as `\\\\`: one printable line, reversed exactly by `unescape_name`."""
    text = os.fspath(name) if isinstance(name, os.PathLike) else str(name)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape_char(ch) for ch in text)


def printable(text: Any) -> str:
    """`text` on one printable line for a terminal or log: non-printable characters escaped as in
    `escape_name`, backslashes left as they are (for display; not reversible, unlike `escape_name`)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape_char(ch) for ch in text)


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def unescape_name(text: str) -> str:
    """The original of `escape_name(original)`."""
    return _ESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(int(m[1][1:], 16)), text)


def csv_cell(name: Any) -> str:
    """A file name as a CSV cell that no spreadsheet evaluates (OWASP CSV injection guidance): escaped
    by `escape_name`, then prefixed with `'` when it begins with `=`, `+`, `-`, `@`, tab, CR or `'`."""
    text = escape_name(name)
    return "'" + text if text.startswith((*FORMULA_START, "'")) else text


def csv_uncell(cell: str) -> str:
    """The original file name of a `csv_cell`."""
    return unescape_name(cell[1:] if cell.startswith("'") else cell)


_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.+=@,-]+")


def safe_filename(name: Any, max_len: int = 80) -> str:
    """One file-name component derived from a user string: characters outside [A-Za-z0-9_.+=@,-]
    become `_` (so no `/`, no control characters), no leading dot (no `..`, no hidden file); when
    anything was changed, a short hash of the original keeps two different names apart."""
    text = str(name)
    safe = _UNSAFE_FILE_CHARS.sub("_", text).lstrip(".")[:max_len] or "_"
    if safe != text:
        safe = f"{safe}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return safe


class EscapeArgsFilter(logging.Filter):
    """Escapes the string, path and exception arguments of every log record that hold a non-printable
    character (`printable`), so a file name with a newline cannot split or forge a log line. The
    message template is left alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(_escaped(a) for a in args)
        elif isinstance(args, dict):
            record.args = {k: _escaped(v) for k, v in args.items()}
        return True


def _escaped(value: Any) -> Any:
    """Strings, paths and exceptions (whose messages often hold a file name) that hold a non-printable
    character, escaped; everything else as it is (so an argument escaped by its caller is not escaped twice)."""
    if isinstance(value, (str, os.PathLike, BaseException)):
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        return value if text.isprintable() else printable(text)
    return value


def install_log_escaping() -> None:
    """Add `EscapeArgsFilter` to the root logger's handlers and to logging's last-resort handler (the CLI
    entry point calls this after Hydra configured logging; library code never changes logging)."""
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None and not any(isinstance(f, EscapeArgsFilter) for f in handler.filters):
            handler.addFilter(EscapeArgsFilter())
