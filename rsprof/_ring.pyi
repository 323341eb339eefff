from collections.abc import Iterable

from rsprof._unwind import StackTable, Unwinder

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
THUNK_DEPTH: int
TAIL_SEARCH_MAX: int
REACH_WORK: int

def open_cpu_clock(tid: int, cpu: int, freq: int, inherit: bool, watermark_bytes: int,
                   stack_bytes: int = ...) -> int: ...
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
    cfi_stacks: int
    unwinder: Unwinder | None
    events: list[Event]
    def __init__(self, stacks: StackTable, target_pid: int, start_ns: int,
                 interval_ns: int) -> None: ...
    def decode_bytes(self, data: bytes, tail: int, head: int) -> int: ...
    def set_code_ranges(
        self, ranges: Iterable[tuple[int, int, bool, bytes | memoryview | None]]) -> None: ...
    def set_code_facts(self, functions: Iterable[tuple[int, int]],
                       slots: Iterable[tuple[int, int]]) -> None: ...
    def set_unwinder(self, unwinder: Unwinder | None, mode: int) -> None: ...
    def take_counts(self) -> list[tuple[int, int, int, int, int]]: ...
    def take_events(self) -> list[Event]: ...

class PerfRing:
    fd: int
    data_size: int
    def __init__(self, fd: int, data_pages: int) -> None: ...
    def drain(self, decoder: PerfDecoder) -> int: ...
    def close(self) -> None: ...

SHM_MAGIC: int
SHM_VERSION: int
SHM_HEADER_BYTES: int
SHM_MAX_FRAMES: int
SHM_MAX_SAMPLE_PERIOD: int
STATE_IDLE: int
STATE_RECORDING: int
STATE_STOPPED: int
REC_PAD: int
REC_STACK: int
REC_ALLOC: int
REC_FREE: int
REC_ALLOC_RAW: int
REC_SAMPLE: int
REC_THREAD: int
REC_SAMPLE_REGS: int
SAMPLER_MAX_STACK_BYTES: int
UNWIND_MAGIC: int
UNWIND_FILE_HEADER_BYTES: int
UNWIND_ROW_BYTES: int
UNWIND_NAME_BYTES: int
UNWIND_MAX_FILE_BYTES: int
UNWIND_NONE: int
UNWIND_SP: int
UNWIND_BP: int
UNWIND_PLT11: int
UNWIND_PLT10: int
UNWIND_OUTERMOST: int
UNWIND_UNSUPPORTED: int
UNWIND_BP_SAME: int

SiteTotals = tuple[int, int, int, int, int, int, int]

class HeapDecoder:
    stacks: StackTable
    alloc_records: int
    free_records: int
    unknown_frees: int
    unknown_stack_allocs: int
    replaced_live: int
    malformed: int
    self_samples: int
    total_live_bytes: int
    peak_total_live_bytes: int
    threads: list[tuple[int, str]]
    cpu: PerfDecoder | None
    def __init__(self, stacks: StackTable) -> None: ...
    def take_changed(self, limit: int = 0) -> list[SiteTotals]: ...
    @property
    def pending_sites(self) -> int: ...
    def take_threads(self) -> list[tuple[int, str]]: ...
    @property
    def live_allocations(self) -> int: ...
    def feed_bytes(self, data: bytes, max_frames: int = ...) -> int: ...

class ShmRing:
    malformed: int
    def __init__(self, fd: int, length: int) -> None: ...
    @property
    def pid(self) -> int: ...
    @property
    def state(self) -> int: ...
    @property
    def reader_pid(self) -> int: ...
    def counters(self) -> dict[str, int]: ...
    def attach(self, reader_pid: int, self_sample_hz: int = ...,
               sampler_stack_bytes: int = ...) -> None: ...
    def heartbeat(self) -> None: ...
    @property
    def sampler_stack_bytes(self) -> int: ...
    @sampler_stack_bytes.setter
    def sampler_stack_bytes(self, value: int) -> None: ...
    def open_start_gate(self) -> None: ...
    def publish_unwind(self, name: str) -> int: ...
    @property
    def unwind_generation(self) -> int: ...
    @property
    def sampler_ready(self) -> bool: ...
    def wake_sampler(self, pid: int) -> int: ...
    def detach(self) -> None: ...
    def drain(self, decoder: HeapDecoder, budget: int = ...) -> int: ...
    def close(self) -> None: ...

def init_region(fd: int, ring_size: int, pid: int, state: int,
                self_sample_hz: int = ..., hold_at_start: bool = ...,
                sampler_stack_bytes: int = ...) -> int: ...
REC_ALLOC_BIG: int
REC_NODE: int
REC_TYPE_SHIFT: int
ALLOC_SIZE_BITS: int
PTR_MASK: int

def record_size(word: int) -> int: ...
