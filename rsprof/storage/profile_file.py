"""Opening profile files: creating them privately, and validating them for reading."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from rsprof.errors import ProfileError, UsageError
from rsprof.storage.schema import SCHEMA_VERSION, TEMP_VIEWS

SQLITE_MAGIC = b"SQLite format 3\x00"


def create_private(path: Path) -> None:
    """Create an empty file readable only by its owner; refuse an existing one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists (use --append to add to it)") from None
    except OSError as exc:
        raise ProfileError(f"cannot create {path}: {exc.strerror}") from None
    os.close(fd)


def check_is_sqlite(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ProfileError(f"{path} is a directory, not a profile") from None
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror}") from None
    if head != SQLITE_MAGIC:
        raise ProfileError(f"{path} is not an rsprof profile (not an SQLite database)")


def check_schema(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; raises ProfileError unless it is a profile we can read."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        if "no such table" in str(exc):
            raise ProfileError(f"{path} is not an rsprof profile (no meta table)") from None
        raise ProfileError(f"{path} is corrupt: {exc}") from None
    if row is None:
        raise ProfileError(f"{path} is not an rsprof profile (no schema version)")
    try:
        version = int(row[0])
    except ValueError:
        raise ProfileError(f"{path} has a bad schema version {row[0]!r}") from None
    if version > SCHEMA_VERSION:
        raise ProfileError(
            f"{path} has schema version {version}, newer than this rsprof reads "
            f"({SCHEMA_VERSION}); upgrade rsprof"
        )
    return version


def open_readonly(path: Path) -> sqlite3.Connection:
    """Open an existing profile read-only, after checking that it is one.

    A file of an older schema version gets this version's views as TEMP views
    (they live in the connection, never in the file, and shadow the file's own
    views of the same names), so its queries read as docs/schema.md says. So does a
    file of this version written before a view gained a column (heap_samples.partial)."""
    check_is_sqlite(path)
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as exc:
        raise ProfileError(f"cannot open {path}: {exc}") from None
    if check_schema(conn, path) < SCHEMA_VERSION or not any(
            row[1] == "partial" for row in conn.execute("PRAGMA table_info(heap_samples)")):
        try:
            conn.execute("PRAGMA query_only = 0")  # TEMP views only: the file is mode=ro
            conn.executescript(TEMP_VIEWS)
            conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            conn.close()
            raise ProfileError(f"{path} has an older schema whose views cannot be "
                               f"updated: {exc}") from None
    return conn
