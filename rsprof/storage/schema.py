"""The profile schema: tables, human-facing views, and its version.

docs/schema.md documents every table and view here; keep them in step.
"""

from __future__ import annotations

import re
import sqlite3

# 2: heap_samples, heap_timeline, cpu_samples and cpu_leaf_samples have one row per
# charged site; the per-stack rows moved to heap_stacks, heap_stack_timeline, cpu_stacks.
# Later additions within version 2 (an older rsprof reads such a file and ignores them;
# this one reads files without them): cpu_counts.ns, the mappings table,
# recordings.unwind, stack_bytes and cfi_stacks, modules.symbols, functions and cfi
# (ADDED_COLUMNS, and CREATE TABLE IF NOT EXISTS).
SCHEMA_VERSION = 2

TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS recordings (
    id            INTEGER PRIMARY KEY,
    pid           INTEGER NOT NULL,
    process_name  TEXT NOT NULL,
    cmdline       TEXT NOT NULL,
    executable    TEXT,
    build_id      TEXT,
    cpu_source    TEXT NOT NULL,
    cpu_freq      INTEGER NOT NULL,
    interval_s    REAL NOT NULL,
    start_time    REAL NOT NULL,
    end_time      REAL,
    end_reason    TEXT,
    samples       INTEGER NOT NULL DEFAULT 0,
    lost_records  INTEGER NOT NULL DEFAULT 0,
    truncated_stacks INTEGER NOT NULL DEFAULT 0,
    unresolved_addresses INTEGER NOT NULL DEFAULT 0,
    malformed_records INTEGER NOT NULL DEFAULT 0,
    throttle_events INTEGER NOT NULL DEFAULT 0,
    other_process_samples INTEGER NOT NULL DEFAULT 0,
    broken_stacks INTEGER NOT NULL DEFAULT 0,
    scanned_stacks INTEGER NOT NULL DEFAULT 0,
    heap_source   TEXT,
    exit_code     INTEGER,
    heap_allocs INTEGER NOT NULL DEFAULT 0,
    heap_frees INTEGER NOT NULL DEFAULT 0,
    heap_unknown_frees INTEGER NOT NULL DEFAULT 0,
    heap_dropped INTEGER NOT NULL DEFAULT 0,
    heap_malformed INTEGER NOT NULL DEFAULT 0,
    heap_unknown_stacks INTEGER NOT NULL DEFAULT 0,
    heap_replaced_live INTEGER NOT NULL DEFAULT 0,
    heap_raw_stacks INTEGER NOT NULL DEFAULT 0,
    heap_truncated_stacks INTEGER NOT NULL DEFAULT 0,
    heap_waits INTEGER NOT NULL DEFAULT 0,
    unwind        TEXT,
    stack_bytes   INTEGER,
    cfi_stacks    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS modules (
    id        INTEGER PRIMARY KEY,
    path      TEXT NOT NULL,
    build_id  TEXT,
    symbols   TEXT,
    functions INTEGER,
    cfi       INTEGER,
    UNIQUE (path, build_id)
);
CREATE TABLE IF NOT EXISTS frames (
    id        INTEGER PRIMARY KEY,
    function  TEXT NOT NULL,
    file      TEXT,
    line      INTEGER,
    module_id INTEGER NOT NULL REFERENCES modules(id),
    internal  INTEGER NOT NULL,
    resolved  INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS frames_identity
    ON frames (function, IFNULL(file, ''), IFNULL(line, -1), module_id);
CREATE TABLE IF NOT EXISTS addresses (
    id           INTEGER PRIMARY KEY,
    recording_id INTEGER NOT NULL REFERENCES recordings(id),
    address      INTEGER NOT NULL,
    module_id    INTEGER NOT NULL REFERENCES modules(id),
    rel_address  INTEGER NOT NULL,
    UNIQUE (recording_id, address)
);
CREATE TABLE IF NOT EXISTS address_frames (
    address_id INTEGER NOT NULL REFERENCES addresses(id),
    depth      INTEGER NOT NULL,
    frame_id   INTEGER NOT NULL REFERENCES frames(id),
    PRIMARY KEY (address_id, depth)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stacks (
    id            INTEGER PRIMARY KEY,
    recording_id  INTEGER NOT NULL REFERENCES recordings(id),
    depth         INTEGER NOT NULL,
    address_ids   BLOB NOT NULL,
    leaf_frame_id INTEGER NOT NULL REFERENCES frames(id),
    user_frame_id INTEGER NOT NULL REFERENCES frames(id)
);
CREATE TABLE IF NOT EXISTS threads (
    recording_id INTEGER NOT NULL REFERENCES recordings(id),
    tid          INTEGER NOT NULL,
    name         TEXT NOT NULL,
    PRIMARY KEY (recording_id, tid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS heap_sites (
    recording_id    INTEGER NOT NULL REFERENCES recordings(id),
    stack_id        INTEGER NOT NULL REFERENCES stacks(id),
    allocs          INTEGER NOT NULL,
    alloc_bytes     INTEGER NOT NULL,
    frees           INTEGER NOT NULL,
    free_bytes      INTEGER NOT NULL,
    live_bytes      INTEGER NOT NULL,
    peak_live_bytes INTEGER NOT NULL,
    PRIMARY KEY (recording_id, stack_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS heap_counts (
    recording_id INTEGER NOT NULL REFERENCES recordings(id),
    interval     INTEGER NOT NULL,
    stack_id     INTEGER NOT NULL REFERENCES stacks(id),
    allocs       INTEGER NOT NULL,
    alloc_bytes  INTEGER NOT NULL,
    frees        INTEGER NOT NULL,
    free_bytes   INTEGER NOT NULL,
    live_bytes   INTEGER NOT NULL,
    PRIMARY KEY (recording_id, interval, stack_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cpu_counts (
    recording_id INTEGER NOT NULL REFERENCES recordings(id),
    interval     INTEGER NOT NULL,
    tid          INTEGER NOT NULL,
    stack_id     INTEGER NOT NULL REFERENCES stacks(id),
    samples      INTEGER NOT NULL,
    ns           INTEGER,
    PRIMARY KEY (recording_id, interval, tid, stack_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mappings (
    recording_id  INTEGER NOT NULL REFERENCES recordings(id),
    module_id     INTEGER NOT NULL REFERENCES modules(id),
    start_address INTEGER NOT NULL,
    end_address   INTEGER NOT NULL,
    file_offset   INTEGER NOT NULL,
    PRIMARY KEY (recording_id, module_id, start_address)
) WITHOUT ROWID;
"""

# Columns added to existing tables within a schema version: a writer appending to an
# older file adds them (NULL in its older rows); readers check with has_column().
ADDED_COLUMNS = (
    ("cpu_counts", "ns", "INTEGER"),
    ("recordings", "unwind", "TEXT"),
    ("recordings", "stack_bytes", "INTEGER"),
    ("recordings", "cfi_stacks", "INTEGER NOT NULL DEFAULT 0"),
    # The detail a module's ELF file gives (rsprof/report/detail_notes.py).
    ("modules", "symbols", "TEXT"),
    ("modules", "functions", "INTEGER"),
    ("modules", "cfi", "INTEGER"),
)


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    """Whether the file's `table` has `column` (an older file may lack an added one)."""
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})"))


def has_table(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (table,)).fetchone() is not None


VIEWS_TEMPLATE = """
{cpu_sample_views}CREATE VIEW IF NOT EXISTS cpu_functions AS
SELECT f.function AS function,
       m.path AS module,
       SUM(c.samples) AS samples,
       round(100.0 * SUM(c.samples) / (SELECT SUM(samples) FROM cpu_counts), 2) AS percent
FROM cpu_counts c
JOIN stacks s ON s.id = c.stack_id
JOIN frames f ON f.id = s.user_frame_id
JOIN modules m ON m.id = f.module_id
GROUP BY f.function, m.path
ORDER BY samples DESC;

CREATE VIEW IF NOT EXISTS heap_samples AS
SELECT f.function AS function,
       f.file AS file,
       f.line AS line,
       SUM(h.alloc_bytes) AS total_alloc_bytes,
       SUM(h.free_bytes) AS total_free_bytes,
       SUM(h.allocs) AS total_allocs,
       SUM(h.frees) AS total_frees,
       SUM(h.live_bytes) AS live_bytes,
       m.path AS module,
       COUNT(*) AS stacks,
       h.recording_id AS recording_id,
       {heap_partial} AS partial
FROM heap_sites h
JOIN recordings r ON r.id = h.recording_id
JOIN stacks s ON s.id = h.stack_id
JOIN frames f ON f.id = s.user_frame_id
JOIN modules m ON m.id = f.module_id
GROUP BY h.recording_id, f.id;

CREATE VIEW IF NOT EXISTS heap_stacks AS
SELECT f.function AS function,
       f.file AS file,
       f.line AS line,
       h.alloc_bytes AS total_alloc_bytes,
       h.free_bytes AS total_free_bytes,
       h.allocs AS total_allocs,
       h.frees AS total_frees,
       h.live_bytes AS live_bytes,
       h.peak_live_bytes AS peak_live_bytes,
       m.path AS module,
       h.stack_id AS stack_id,
       h.recording_id AS recording_id,
       {heap_partial} AS partial
FROM heap_sites h
JOIN recordings r ON r.id = h.recording_id
JOIN stacks s ON s.id = h.stack_id
JOIN frames f ON f.id = s.user_frame_id
JOIN modules m ON m.id = f.module_id;

CREATE VIEW IF NOT EXISTS heap_timeline AS
WITH stack_deltas AS (
    SELECT c.recording_id AS recording_id,
           c.interval AS interval,
           s.user_frame_id AS frame_id,
           c.allocs - COALESCE(LAG(c.allocs) OVER w, 0) AS allocs,
           c.alloc_bytes - COALESCE(LAG(c.alloc_bytes) OVER w, 0) AS alloc_bytes,
           c.frees - COALESCE(LAG(c.frees) OVER w, 0) AS frees,
           c.free_bytes - COALESCE(LAG(c.free_bytes) OVER w, 0) AS free_bytes,
           c.live_bytes - COALESCE(LAG(c.live_bytes) OVER w, 0) AS live_bytes
    FROM heap_counts c
    JOIN stacks s ON s.id = c.stack_id
    WINDOW w AS (PARTITION BY c.stack_id ORDER BY c.interval)
),
site_deltas AS (
    SELECT recording_id, interval, frame_id,
           SUM(allocs) AS allocs, SUM(alloc_bytes) AS alloc_bytes, SUM(frees) AS frees,
           SUM(free_bytes) AS free_bytes, SUM(live_bytes) AS live_bytes
    FROM stack_deltas
    GROUP BY recording_id, frame_id, interval
)
SELECT {interval_time}
       f.function AS function,
       f.file AS file,
       f.line AS line,
       SUM(c.allocs) OVER site AS total_allocs,
       SUM(c.alloc_bytes) OVER site AS total_alloc_bytes,
       SUM(c.frees) OVER site AS total_frees,
       SUM(c.free_bytes) OVER site AS total_free_bytes,
       SUM(c.live_bytes) OVER site AS live_bytes,
       m.path AS module,
       c.recording_id AS recording_id
FROM site_deltas c
JOIN recordings r ON r.id = c.recording_id
JOIN frames f ON f.id = c.frame_id
JOIN modules m ON m.id = f.module_id
WINDOW site AS (PARTITION BY c.recording_id, c.frame_id ORDER BY c.interval);

CREATE VIEW IF NOT EXISTS heap_stack_timeline AS
SELECT {interval_time}
       f.function AS function,
       f.file AS file,
       f.line AS line,
       c.allocs AS total_allocs,
       c.alloc_bytes AS total_alloc_bytes,
       c.frees AS total_frees,
       c.free_bytes AS total_free_bytes,
       c.live_bytes AS live_bytes,
       m.path AS module,
       c.stack_id AS stack_id,
       c.recording_id AS recording_id
FROM heap_counts c
JOIN recordings r ON r.id = c.recording_id
JOIN stacks s ON s.id = c.stack_id
JOIN frames f ON f.id = s.user_frame_id
JOIN modules m ON m.id = f.module_id;

CREATE VIEW IF NOT EXISTS address_symbols AS
SELECT a.id AS address_id,
       a.recording_id AS recording_id,
       printf('0x%x', a.address) AS address,
       printf('0x%x', a.rel_address) AS rel_address,
       af.depth AS depth,
       f.function AS function,
       f.file AS file,
       f.line AS line,
       f.internal AS internal,
       m.path AS module
FROM addresses a
JOIN address_frames af ON af.address_id = a.id
JOIN frames f ON f.id = af.frame_id
JOIN modules m ON m.id = a.module_id;
"""


# cpu_samples charges by the default rule, cpu_leaf_samples by the true leaf:
# the same per-site view over a different stored frame. cpu_stacks keeps one row
# per stack (charged by the default rule). The per-site views sum the counts per
# frame id before joining the names (twice as fast as grouping the joined rows).
_CPU_SAMPLES_VIEW = """CREATE VIEW IF NOT EXISTS {name} AS
SELECT {interval_time}
       COALESCE(t.name, '') AS thread,
       c.tid AS tid,
       f.function AS function,
       f.file AS file,
       f.line AS line,
       c.samples AS samples,
       m.path AS module,
       c.recording_id AS recording_id
FROM (SELECT cc.recording_id AS recording_id, cc.interval AS interval, cc.tid AS tid,
             s.{frame_column} AS frame_id, SUM(cc.samples) AS samples
      FROM cpu_counts cc
      JOIN stacks s ON s.id = cc.stack_id
      GROUP BY cc.recording_id, cc.interval, cc.tid, s.{frame_column}) c
JOIN recordings r ON r.id = c.recording_id
JOIN frames f ON f.id = c.frame_id
JOIN modules m ON m.id = f.module_id
LEFT JOIN threads t ON t.recording_id = c.recording_id AND t.tid = c.tid;
"""

_CPU_STACKS_VIEW = """CREATE VIEW IF NOT EXISTS cpu_stacks AS
SELECT {interval_time}
       COALESCE(t.name, '') AS thread,
       c.tid AS tid,
       f.function AS function,
       f.file AS file,
       f.line AS line,
       c.samples AS samples,
       m.path AS module,
       c.stack_id AS stack_id,
       c.recording_id AS recording_id
FROM cpu_counts c
JOIN recordings r ON r.id = c.recording_id
JOIN stacks s ON s.id = c.stack_id
JOIN frames f ON f.id = s.user_frame_id
JOIN modules m ON m.id = f.module_id
LEFT JOIN threads t ON t.recording_id = c.recording_id AND t.tid = c.tid;
"""

# When an interval (row c of a per-interval table, joined to its recording r) began:
# local wall-clock time, and seconds since the profile's first recording began.
_INTERVAL_TIME = """strftime('%Y-%m-%d %H:%M:%S', r.start_time + c.interval * r.interval_s,
                'unixepoch', 'localtime') AS time,
       round(r.start_time + c.interval * r.interval_s
             - (SELECT min(start_time) FROM recordings), 3) AS elapsed_s,"""

# 1 when a recording's heap totals may be incomplete (docs/schema.md, `partial`): the
# shim dropped records, or the recording never finished (still being recorded, or its
# rsprof was killed).
_HEAP_PARTIAL = "(r.heap_dropped > 0 OR COALESCE(r.end_reason, 'recording') = 'recording')"

VIEWS = VIEWS_TEMPLATE.replace("{heap_partial}", _HEAP_PARTIAL)
VIEWS = VIEWS.replace("{cpu_sample_views}", "\n".join(
    _CPU_SAMPLES_VIEW.replace("{interval_time}", _INTERVAL_TIME).format(
        name=name, frame_column=column) + "\n"
    for name, column in (("cpu_samples", "user_frame_id"), ("cpu_leaf_samples", "leaf_frame_id"))
) + "\n" + _CPU_STACKS_VIEW + "\n").replace("{interval_time}", _INTERVAL_TIME)

# Every view by name. A writer drops and recreates them all, so a file it writes
# (or appends to) has this version's views; a reader of an older file gets this
# version's views as TEMP views, which shadow the file's own (TEMP_VIEWS).
VIEW_NAMES = tuple(re.findall(r"^CREATE VIEW IF NOT EXISTS (\w+) AS$", VIEWS, re.MULTILINE))
DROP_VIEWS = "".join(f"DROP VIEW IF EXISTS {name};\n" for name in VIEW_NAMES)
TEMP_VIEWS = VIEWS.replace("CREATE VIEW IF NOT EXISTS", "CREATE TEMP VIEW IF NOT EXISTS")
