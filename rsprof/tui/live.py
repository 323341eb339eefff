"""The live display while recording: the recorder on one thread, the snapshot
loader on another, the TUI on the main thread.

The recorder commits once per interval; the loader reads each commit from
the profile file (read-only, WAL) and publishes a snapshot; `q`/Esc/Ctrl-C
stops the recorder exactly like Ctrl-C without the display (`interrupted`),
and the file is finalized before rsprof exits. SIGTERM does the same and the
terminal is always restored.
"""

from __future__ import annotations

import io
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from rsprof.recording.recorder import Recorder, RecordResult
from rsprof.storage.profile_file import open_readonly
from rsprof.tui.app import TuiApp
from rsprof.tui.loader import ProfileLoader
from rsprof.tui.snapshot import EMPTY, RECORDING

POLL_S = 0.25


def display_available(quiet: bool) -> bool:
    """The live display needs a terminal on both sides (else: -q behaviour)."""
    return not quiet and sys.stdin.isatty() and sys.stdout.isatty()


class LiveSession:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.status = io.StringIO()  # the recorder's lines, shown after the display
        recorder.status = self.status
        self.result: RecordResult | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._stop_loader = threading.Event()

    def _record(self) -> None:
        try:
            self.result = self.recorder.run()
        except BaseException as exc:  # reported on the main thread
            self.error = exc
        finally:
            self._done.set()
            self.recorder.started.set()

    def _load(self, tui: TuiApp) -> None:
        conn = open_readonly(self.recorder.options.output)
        try:
            loader = ProfileLoader(conn, live=True)
            last_version = -1
            while True:
                finished = self._done.is_set()
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != last_version or finished:
                    last_version = version
                    tui.publish(loader.load())
                elif tui.shown.state == RECORDING:
                    tui.app.invalidate()  # the elapsed clock
                if finished or self._stop_loader.wait(POLL_S):
                    break
        finally:
            conn.close()

    def run(self) -> RecordResult:
        recording = threading.Thread(target=self._record, name="rsprof-recorder", daemon=True)
        recording.start()
        self.recorder.started.wait()
        if self.error is not None:  # failed before recording began: one clear line
            raise self.error
        tui = TuiApp(EMPTY, live=True, on_quit=lambda: self.recorder.request_stop("interrupted"))
        loader = threading.Thread(target=self._load, args=(tui,), name="rsprof-loader",
                                  daemon=True)
        old_term = signal.signal(signal.SIGTERM, self._on_term(tui))
        try:
            loader.start()
            tui.run()
        finally:
            signal.signal(signal.SIGTERM, old_term)
            self.recorder.request_stop("interrupted")
            recording.join()
            self._stop_loader.set()
            loader.join(timeout=5)
            sys.stderr.write(self.status.getvalue())
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def _on_term(self, tui: TuiApp) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.recorder.request_stop("interrupted")
            loop = tui.app.loop
            if loop is not None and tui.app.is_running:
                loop.call_soon_threadsafe(tui.app.exit)
        return handler
