"""Migration files as text: read, named, split into statements, their header markers found.

The lowest layer of the runner: no database, no psycopg. The operator's side
imports it too (restobot/release_archive.py reads the markers of the files it
ships), so it stays importable anywhere.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

#: restobot/remote/migrate/lexer.py -> the migrations/ directory beside restobot/ (repo, release or image).
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "migrations"
NO_TRANSACTION_MARKER = "migrate:no-transaction"
# Header marker: older releases still run on the schema this file leaves (it only adds).
BACKWARD_COMPATIBLE_MARKER = "migrate:backward-compatible"

FILENAME_RE = re.compile(r"^(?P<version>[0-9]{4,})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
FILENAME_RULE = "NNNN_description.sql (4 or more digits, an underscore, lowercase letters, digits and underscores)"

# Statements that cannot run inside the transaction the runner wraps a file in.
_NEEDS_NO_TRANSACTION_RE = re.compile(
    r"^(create\s+(unique\s+)?index\s+concurrently|drop\s+index\s+concurrently|reindex\b[^;]*\bconcurrently"
    r"|vacuum\b|create\s+database|drop\s+database|alter\s+system)",
    re.IGNORECASE,
)
# Statements that would end the runner's transaction behind its back.
_TRANSACTION_CONTROL_RE = re.compile(
    r"^(begin|commit|rollback|abort|end|start\s+transaction)\b", re.IGNORECASE
)
_DOLLAR_TAG_RE = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")


# --------------------------------------------------------------------------- errors


class MigrationError(Exception):
    """A failure the operator can act on; its message says what, where and how out."""


class RefusedError(MigrationError):
    """The run was refused before anything was applied."""


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a file, without its terminating semicolon."""

    text: str
    offset: int  # index of the statement's first character in the file text
    line: int  # 1-based line of that character


@dataclass(frozen=True)
class Migration:
    """A migration file as read from disk."""

    version: int
    filename: str
    path: Path
    checksum: str
    transactional: bool
    source: str
    statements: tuple[Statement, ...]
    backward_compatible: bool = False

    @property
    def version_label(self) -> str:
        return self.filename.split("_", 1)[0]


def version_of(filename: str) -> int:
    """The version a migration file name carries (``0007_x.sql`` -> 7); -1 for a name that is not one."""
    match = FILENAME_RE.match(filename)
    return int(match.group("version")) if match else -1


def _line_col(source: str, offset: int) -> tuple[int, int]:
    line = source.count("\n", 0, offset) + 1
    col = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, col


def _first_line(text: str, limit: int = 100) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


class _SplitError(ValueError):
    def __init__(self, what: str, offset: int) -> None:
        super().__init__(what)
        self.what = what
        self.offset = offset


def split_statements(source: str) -> list[Statement]:
    """Split SQL text into statements at top-level semicolons.

    Knows ``--`` and nested ``/* */`` comments, 'strings' (with '' and E'\\''
    escapes), "identifiers" and $tag$ dollar quotes$tag$, so semicolons inside
    them do not split. Comment-only chunks are dropped. Raises ValueError
    (with ``.offset``) on an unterminated quote or comment.
    """
    statements: list[Statement] = []
    n = len(source)
    i = 0
    start: int | None = None  # offset of the current statement's first code char

    def begin(at: int) -> None:
        nonlocal start
        if start is None:
            start = at

    while i < n:
        c = source[i]
        if c == "-" and source.startswith("--", i):
            j = source.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "/" and source.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if source.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif source.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                raise _SplitError("unterminated /* comment", i)
            i = j
            continue
        if c == "'":
            prev = source[i - 1] if i else ""
            before = source[i - 2] if i > 1 else ""
            escapes = prev in "eE" and not (before.isalnum() or before in "_$")
            begin(i - 1 if escapes else i)
            j = i + 1
            while True:
                if j >= n:
                    raise _SplitError("unterminated quoted string", i)
                ch = source[j]
                if escapes and ch == "\\":
                    j += 2
                    continue
                if ch == "'":
                    if j + 1 < n and source[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            continue
        if c == '"':
            begin(i)
            j = i + 1
            while True:
                if j >= n:
                    raise _SplitError('unterminated quoted identifier', i)
                if source[j] == '"':
                    if j + 1 < n and source[j + 1] == '"':
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            continue
        if c == "$":
            prev = source[i - 1] if i else ""
            m = _DOLLAR_TAG_RE.match(source, i)
            if m and not (prev.isalnum() or prev == "_"):
                tag = m.group(0)
                end = source.find(tag, m.end())
                if end < 0:
                    raise _SplitError(f"unterminated dollar-quoted string {tag}", i)
                begin(i)
                i = end + len(tag)
                continue
        if c == ";":
            if start is not None:
                text = source[start:i].rstrip()
                statements.append(Statement(text, start, _line_col(source, start)[0]))
                start = None
            i += 1
            continue
        if not c.isspace():
            begin(i)
        i += 1
    if start is not None:
        text = source[start:].rstrip()
        statements.append(Statement(text, start, _line_col(source, start)[0]))
    return statements


def header_has(source: str, marker: str) -> bool:
    """True when the file's header comments (before the first statement) hold ``-- marker``."""
    for raw in source.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            return False
        if line[2:].strip().lower() == marker:
            return True
    return False


def _header_is_no_transaction(source: str, filename: str) -> bool:
    """True when the file's header comments hold the no-transaction marker."""
    in_header = True
    found = False
    for number, raw in enumerate(source.splitlines(), 1):
        line = raw.strip()
        if in_header:
            if not line:
                continue
            if line.startswith("--"):
                if line[2:].strip().lower() == NO_TRANSACTION_MARKER:
                    found = True
                continue
            in_header = False
        if line.startswith("--") and line[2:].strip().lower() == NO_TRANSACTION_MARKER:
            raise RefusedError(
                f"{filename} line {number}: '-- {NO_TRANSACTION_MARKER}' must be in the file's header "
                "(the comment lines before the first statement); move it to the top of the file."
            )
    return found


def _read_migration(path: Path, version: int) -> Migration:
    filename = path.name
    data = path.read_bytes()
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RefusedError(f"{filename}: not UTF-8 text (byte {exc.start}); save the file as UTF-8.") from None
    transactional = not _header_is_no_transaction(source, filename)
    try:
        statements = tuple(split_statements(source))
    except _SplitError as exc:
        line, col = _line_col(source, exc.offset)
        raise RefusedError(
            f"{filename} line {line}, column {col}: {exc.what}; close it so the file can be split into statements."
        ) from None
    if not statements:
        raise RefusedError(f"{filename}: holds no SQL statement; write the migration or delete the file.")
    if transactional:
        for index, st in enumerate(statements, 1):
            if _TRANSACTION_CONTROL_RE.match(st.text):
                raise RefusedError(
                    f"{filename} statement {index} (line {st.line}): '{_first_line(st.text)}' manages the "
                    "transaction, but the runner already wraps each file in one. Remove BEGIN/COMMIT, or put "
                    f"'-- {NO_TRANSACTION_MARKER}' in the header if the file must control its own transactions."
                )
            if _NEEDS_NO_TRANSACTION_RE.match(st.text):
                raise RefusedError(
                    f"{filename} statement {index} (line {st.line}): '{_first_line(st.text)}' cannot run inside "
                    f"a transaction. Put '-- {NO_TRANSACTION_MARKER}' in the file's header and make the file "
                    "re-runnable (IF NOT EXISTS / IF EXISTS)."
                )
    return Migration(
        version=version,
        filename=filename,
        path=path,
        checksum=hashlib.sha256(data).hexdigest(),
        transactional=transactional,
        source=source,
        statements=statements,
        backward_compatible=header_has(source, BACKWARD_COMPATIBLE_MARKER),
    )


def load_migrations(directory: Path | str) -> list[Migration]:
    """Read every ``*.sql`` file of ``directory``, sorted by version.

    Other files (README.md, ...) are ignored. Raises RefusedError naming the
    file for a bad name, a duplicate version, unreadable or unsplittable SQL.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RefusedError(
            f"migrations directory {directory} does not exist; pass --dir or set MIGRATIONS_DIR."
        )
    found: dict[int, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql" or not path.is_file():
            continue
        match = FILENAME_RE.match(path.name)
        if not match:
            raise RefusedError(f"{path.name}: migration files must be named {FILENAME_RULE}; rename it.")
        version = int(match.group("version"))
        if version in found:
            raise RefusedError(
                f"{found[version].name} and {path.name} share version {match.group('version')}; "
                "give one of them the next free number."
            )
        found[version] = path
    return [_read_migration(found[v], v) for v in sorted(found)]

