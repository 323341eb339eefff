"""A real terminal for tests: one tmux session running a shell command, read with
capture-pane and driven with send-keys."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable


class Pane:
    def __init__(self, command: str, width: int, height: int, timeout: float = 20.0) -> None:
        """Start `command` (a shell command line) in a new detached session of
        width x height; `timeout` is how long wait_for waits by default."""
        self.name = f"rsprof-test-{uuid.uuid4().hex[:8]}"
        self.timeout = timeout
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y",
                        str(height), command], check=True)

    def text(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True, check=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def resize(self, width: int, height: int) -> None:
        subprocess.run(["tmux", "resize-window", "-t", self.name, "-x", str(width), "-y",
                        str(height)], check=True)

    def wait_for(self, until: str | Callable[[str], bool], what: str | None = None,
                 timeout: float | None = None) -> str:
        """The screen once it contains `until` (text) or satisfies it (a predicate)."""
        ready = (lambda t: until in t) if isinstance(until, str) else until
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if ready(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or repr(until)}; the screen:\n{text}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)
