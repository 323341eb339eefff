"""`rsprof query FILE SQL`: run SQL against a profile, opened read-only."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import click

from rsprof.errors import QueryError
from rsprof.report.render import Cell, render_csv, render_json, render_table
from rsprof.storage.profile_file import open_readonly


@click.command("query")
@click.argument("profile", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="Write rows as a JSON array of objects.")
@click.option("--csv", "as_csv", is_flag=True, help="Write CSV.")
def query_command(profile: Path, sql: str, as_json: bool, as_csv: bool) -> None:
    """Run SQL against PROFILE (read-only). Views: cpu_samples, cpu_functions, ...

    See docs/schema.md for the tables and views.
    """
    conn = open_readonly(profile)
    try:
        cur = conn.execute(sql)
        headers = [d[0] for d in cur.description or []]
        rows: list[tuple[Cell, ...]] = [tuple(r) for r in cur.fetchall()]
    except (sqlite3.Error, sqlite3.Warning) as exc:
        raise QueryError(f"SQL error: {exc}") from None
    finally:
        conn.close()
    out = sys.stdout
    if as_json:
        render_json(out, [dict(zip(headers, r, strict=True)) for r in rows])
    elif as_csv:
        render_csv(out, headers, rows)
    elif headers:
        render_table(out, headers, rows, max_width=120)
