"""`rsprof list`: profiles in a directory with process, start, duration and samples."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from rsprof.report.render import Cell, render_json, render_table
from rsprof.storage.discovery import list_profiles


@click.command("list")
@click.option("-d", "--dir", "directory", default=".", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Directory to look in.")
@click.option("--json", "as_json", is_flag=True, help="Write JSON.")
def list_command(directory: Path, as_json: bool) -> None:
    """List rsprof profiles in a directory, oldest first."""
    profiles = list_profiles(directory)
    if as_json:
        render_json(sys.stdout, [{"path": str(p.path), **p.summary.as_dict()} for p in profiles])
        return
    if not profiles:
        sys.stdout.write(f"no rsprof profiles in {directory}\n")
        return
    rows: list[list[Cell]] = [[p.path.name, p.summary.process_name, p.summary.pid,
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.summary.start_time)),
             f"{p.summary.duration_s:.1f}s", p.summary.counters["samples"]]
            for p in profiles]
    render_table(sys.stdout, ["file", "process", "pid", "start", "duration", "samples"], rows,
                 right_align=[False, False, True, False, True, True])
