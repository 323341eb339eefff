"""Finding profiles on disk: `rsprof list`, and "the newest" for top/view."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from rsprof.errors import ProfileError, UsageError
from rsprof.report.profile_summary import ProfileSummary, read_summary
from rsprof.storage.profile_file import open_readonly

PROFILE_SUFFIX = ".db"


@dataclass(frozen=True, slots=True)
class ProfileListing:
    path: Path
    summary: ProfileSummary


def list_profiles(directory: Path) -> list[ProfileListing]:
    """Profiles in `directory`, oldest first; files that are not profiles are skipped."""
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    found: list[ProfileListing] = []
    for path in sorted(directory.iterdir()):
        if path.suffix != PROFILE_SUFFIX or not path.is_file():
            continue
        try:
            conn = open_readonly(path)
        except ProfileError:
            continue
        try:
            found.append(ProfileListing(path, read_summary(conn)))
        except sqlite3.Error:
            continue
        finally:
            conn.close()
    found.sort(key=lambda p: (p.summary.start_time, p.path.name))
    return found


def newest_profile(directory: Path) -> Path:
    profiles = list_profiles(directory)
    if not profiles:
        raise UsageError(f"no rsprof profiles in {directory}; give a file")
    return profiles[-1].path
