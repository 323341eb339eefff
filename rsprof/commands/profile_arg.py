"""The PROFILE argument shared by report commands: a path, or the newest profile here."""

from __future__ import annotations

from pathlib import Path

from rsprof.storage.discovery import newest_profile


def resolve_profile(profile: Path | None) -> Path:
    return profile if profile is not None else newest_profile(Path.cwd())
