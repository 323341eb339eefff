from collections.abc import Iterable

from rsprof._unwind import StackTable

RECORD_SAMPLE: int
RECORD_LOST: int
RECORD_COMM: int
RECORD_EXIT: int
RECORD_FORK: int
RECORD_THROTTLE: int
RECORD_UNTHROTTLE: int
SAMPLE_TYPE: int
CONTEXT_MAX: int
CONTEXT_USER: int
MAX_STACK: int
MIN_RETURN_ADDRESS: int
MAX_RETURN_ADDRESS: int
NREGS: int
STACK_BYTES: int
MAX_SCANNED_FRAMES: int

def open_cpu_clock(tid: int, cpu: int, freq: int, inherit: bool, watermark_bytes: int) -> int: ...
def set_output(fd: int, target_fd: int) -> None: ...

Event = tuple[str, int, int, int, str]

class PerfDecoder:
    stacks: StackTable
    target_pid: int
    start_ns: int
    interval_ns: int
    samples: int
    lost: int
    truncated: int
    throttled: int
    other_process_samples: int
    malformed: int
    early_samples: int
    broken_chains: int
    scanned_stacks: int
    events: list[Event]
    def __init__(self, stacks: StackTable, target_pid: int, start_ns: int,
                 interval_ns: int) -> None: ...
    def decode_bytes(self, data: bytes, tail: int, head: int) -> int: ...
    def set_code_ranges(
        self, ranges: Iterable[tuple[int, int, bool, bytes | memoryview | None]]) -> None: ...
    def take_counts(self) -> list[tuple[int, int, int, int]]: ...
    def take_events(self) -> list[Event]: ...

class PerfRing:
    fd: int
    data_size: int
    def __init__(self, fd: int, data_pages: int) -> None: ...
    def drain(self, decoder: PerfDecoder) -> int: ...
    def close(self) -> None: ...
