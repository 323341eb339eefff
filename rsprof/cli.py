"""The rsprof command line: the root group registers one command per module.

`main(argv) -> int` turns every expected failure into one line on stderr and
an exit code (2 usage, 1 runtime); only a bug prints a traceback.
"""

from __future__ import annotations

import importlib
import platform
import sys

import click

from rsprof import __version__
from rsprof.commands.export import export_command
from rsprof.commands.list_profiles import list_command
from rsprof.commands.options import sampling_options
from rsprof.commands.query import query_command
from rsprof.commands.record import record_command
from rsprof.commands.run import run_command
from rsprof.commands.top import top_group
from rsprof.commands.view import view_command
from rsprof.errors import RsprofError, UsageError

ROOT_HELP = """Profile CPU and heap of a Rust process; save to SQLite.

\b
Record a running process (a live display on a terminal; -q: progress lines):
  rsprof -p PID [-o FILE] [-d 10s] [-q]
  rsprof -P NAME ...
Launch a program with heap profiling (exact live memory per call site):
  rsprof run [-o FILE] -- PROGRAM [ARGS...]
Report and query a saved profile (default: the newest in this directory):
  rsprof top cpu [FILE] [-n 50] [--threshold 1.0] [--json|--csv]
  rsprof top heap [FILE] [-n 20] [--json|--csv]
  rsprof query FILE "SELECT * FROM cpu_samples LIMIT 10"
  rsprof view [FILE]               browse it in the TUI (? lists the keys)
  rsprof export FILE -o cpu.svg    flame graph; also .pb.gz (pprof), .speedscope.json,
                                   .folded, .json, .csv
  rsprof list [-d DIR]
top and export take --since 10s --until 40s --thread NAME (a part of the profile).
"""


def version_lines() -> list[str]:
    """`rsprof --version`: one item a line, `rsprof X.Y.Z` first."""
    try:
        from rsprof._ring import SHM_VERSION

        shm = str(SHM_VERSION)
    except ImportError:
        shm = "unknown"
    try:  # written by setup.py when it builds the extensions; not in git
        info = importlib.import_module("rsprof._build_info")
    except ImportError:
        info = None
    cython = str(getattr(info, "CYTHON_VERSION", "unknown"))
    built_python = str(getattr(info, "PYTHON_VERSION", "unknown"))
    python = platform.python_version()
    if built_python not in ("unknown", python):
        python += f" (extensions built with {built_python})"
    return [f"rsprof {__version__}", f"shim shared-memory layout {shm}", f"python {python}",
            f"cython {cython}"]


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo("\n".join(version_lines()))
    ctx.exit()


@click.group(help=ROOT_HELP, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--pid", type=int, help="Record the process with this pid.")
@click.option("-P", "--process", "name", metavar="NAME",
              help="Record the one process with this name.")
@click.option("-o", "--output", metavar="FILE",
              help="Profile file (default: rsprof-<process>-<time>.db here).")
@click.option("-d", "--duration", metavar="DURATION",
              help="Stop after this long (10s, 2m, 500ms); default: until Ctrl-C or exit.")
@sampling_options
@click.option("--append", is_flag=True, help="Add to an existing profile, continuing its timeline.")
@click.option("-q", "--quiet", is_flag=True,
              help="No live display: a progress line a second on stderr (also what "
                   "happens when stdin or stdout is not a terminal).")
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version,
              help="Show the version, the shim's shared-memory layout and the build's "
                   "Python and Cython, and exit.")
@click.pass_context
def root(ctx: click.Context, pid: int | None, name: str | None, output: str | None,
         duration: str | None, interval: str, cpu_freq: int, cpu_source: str, unwind: str,
         stack_bytes: int, append: bool, quiet: bool) -> int:
    if ctx.invoked_subcommand is not None:
        if pid is not None or name is not None:
            raise UsageError("-p/-P record a process; they do not go with a command")
        return 0
    if pid is None and name is None:
        raise UsageError("give -p PID or -P NAME to record, or a command (see rsprof --help)")
    return record_command(pid, name, output, duration, interval, cpu_freq, cpu_source, append,
                          quiet, unwind=unwind, stack_bytes=stack_bytes)


root.add_command(top_group)
root.add_command(query_command)
root.add_command(list_command)
root.add_command(run_command)
root.add_command(view_command)
root.add_command(export_command)


def main(argv: list[str] | None = None) -> int:
    try:
        result = root.main(args=argv, prog_name="rsprof", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        sys.stderr.write(f"rsprof: error: {exc.format_message()}\n")
        return 2
    except click.ClickException as exc:
        sys.stderr.write(f"rsprof: error: {exc.format_message()}\n")
        return exc.exit_code
    except click.Abort:
        sys.stderr.write("rsprof: aborted\n")
        return 130
    except RsprofError as exc:
        sys.stderr.write(f"rsprof: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("rsprof: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    return int(result) if isinstance(result, int) else 0


def entry_point() -> None:
    sys.exit(main())
