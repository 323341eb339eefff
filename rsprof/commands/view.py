"""`rsprof view [PROFILE]`: browse a saved profile in the TUI."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import click

from rsprof.commands.profile_arg import resolve_profile
from rsprof.errors import ProfileError, UsageError
from rsprof.storage.profile_file import open_readonly
from rsprof.tui.app import TuiApp
from rsprof.tui.loader import ProfileLoader


@click.command("view")
@click.argument("profile", required=False, type=click.Path(dir_okay=False, path_type=Path))
def view_command(profile: Path | None) -> None:
    """Browse PROFILE (default: the newest profile in this directory) in the TUI.

    \b
    Keys: q/Esc quit, 1/2 CPU/Memory, m toggle view, c/Enter chart,
    j/k rows, h/l pan chart, +/- zoom, Tab focus, / filter, s sort, ? help.
    """
    path = resolve_profile(profile)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("rsprof view needs a terminal; use `rsprof top` or `rsprof query`")
    conn = open_readonly(path)
    try:
        snapshot = ProfileLoader(conn, live=False).load()
    except sqlite3.Error as exc:
        raise ProfileError(f"cannot read {path}: {exc}") from None
    finally:
        conn.close()
    TuiApp(snapshot, live=False).run()
