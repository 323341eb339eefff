//! Leaks through std's allocation paths, with their exact sizes known to the
//! program itself (tests/integration/test_heap_nofp.py).
//!
//! Three user functions, `#[inline(never)]`, each leave blocks live that were
//! allocated deep inside std (the frames a profiler must unwind through to
//! reach the user function, which a build without frame pointers cannot do
//! by frame pointers):
//!
//! - `grow_vec`: pushes `--vec N` (default 100000) u64 one by one into a Vec,
//!   which grows by realloc (`RawVec::grow_one`, `finish_grow`), then leaks it
//!   (`std::mem::forget`): one block;
//! - `format_strings`: `--strings K` (default 1000) `format!`ed Strings
//!   (`alloc::fmt::format_inner`, precompiled in std, may realloc while it
//!   writes), each leaked: K blocks;
//! - `insert_map`: a `HashMap<u64, u64>` with `--map M` (default 10000)
//!   inserts (hashbrown's resize: allocate the new table, free the old one),
//!   leaked: one block.
//!
//! The truth, independent of any profiler. The `#[global_allocator]` is
//! `Counting`, a wrapper around `System` that charges every allocation and
//! free (realloc = free of the old size + allocation of the new) to the user
//! function running on this thread: a thread-local set when each of the
//! three functions is entered and cleared when it returns (a guard). Each
//! function frees only blocks it allocated itself (intermediate buffers), so
//! allocated minus freed is exactly what it leaves live, and what an exact
//! heap profiler charges to it. At exit the program writes, one line per
//! function, `leak <function> <live bytes> <live blocks>` to stderr, or to
//! the file given by `--truth PATH` (stdout stays quiet); then it sleeps
//! `--linger` seconds (default 0.5).
//!
//! Where Rust's API states the size exactly the program checks the counter
//! against it and panics on a mismatch: the Vec's block is `capacity() * 8`
//! bytes, the Strings' are the sum of their `capacity()`. The HashMap's table
//! size is hashbrown's private layout, so there the counter is the only
//! source inside the program; outside it, rsprof on the frame-pointer build
//! of this program (whose stacks are whole) must agree with it (the test),
//! and heaptrack 1.4 on the no-frame-pointer build showed "278.54K leaked"
//! under `insert_map`, the counter's 278544 bytes (16384 buckets of 16 bytes
//! plus their control bytes) to its display precision.
//!
//! Why the wrapper does not take the charge itself: a profiler charges the
//! first frame of the program's own code above malloc, and `Counting`'s
//! methods are the program's code. They are therefore written so that no
//! frame of theirs is on the stack when libc's allocator runs: they count
//! first and then tail-call `System` (which calls `malloc`, `realloc`,
//! `free` directly for these alignments: a `jmp`, checked in the disassembly
//! of both builds), and they are `#[inline(never)]`, because inlined into
//! `__rust_alloc`, which is itself inlined into std's callers (`finish_grow`),
//! they would be an inlined frame of the call to malloc, and charged. So
//! malloc's caller is std's code that called `__rust_alloc`.
//! tests/integration/test_heap_nofp.py checks that `Counting` is never the
//! charged function.

use rsprof_test_targets::arg_f64;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

const FUNCTIONS: [&str; 3] = ["grow_vec", "format_strings", "insert_map"];
const GROW_VEC: usize = 0;
const FORMAT_STRINGS: usize = 1;
const INSERT_MAP: usize = 2;
const NOBODY: usize = usize::MAX;

thread_local! {
    /// Index into FUNCTIONS of the user function running on this thread.
    static CURRENT: Cell<usize> = const { Cell::new(NOBODY) };
}

static LIVE_BYTES: [AtomicI64; 3] = [const { AtomicI64::new(0) }; 3];
static LIVE_BLOCKS: [AtomicI64; 3] = [const { AtomicI64::new(0) }; 3];

#[inline(always)]
fn charge(bytes: i64, blocks: i64) {
    // try_with: never panics, even while the thread's locals are torn down.
    let current = CURRENT.try_with(Cell::get).unwrap_or(NOBODY);
    if current != NOBODY {
        LIVE_BYTES[current].fetch_add(bytes, Ordering::Relaxed);
        LIVE_BLOCKS[current].fetch_add(blocks, Ordering::Relaxed);
    }
}

/// `System`, counting per user function. Every method counts, then hands over
/// to `System` as its last action (a tail call: see the module comment).
struct Counting;

unsafe impl GlobalAlloc for Counting {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size() as i64, 1);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size() as i64, 1);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        charge(-(layout.size() as i64), -1);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The old block freed, the new one allocated (std never asks for more
        // than it can get here: a failed realloc aborts the program anyway).
        charge(new_size as i64 - layout.size() as i64, 0);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Charges this thread's allocations to FUNCTIONS[index] until dropped.
struct Running;

fn enter(index: usize) -> Running {
    CURRENT.with(|c| c.set(index));
    Running
}

impl Drop for Running {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(NOBODY));
    }
}

fn live(index: usize) -> (i64, i64) {
    (LIVE_BYTES[index].load(Ordering::Relaxed), LIVE_BLOCKS[index].load(Ordering::Relaxed))
}

/// One Vec grown by pushes (realloc after realloc), leaked. Returns its capacity.
#[inline(never)]
fn grow_vec(n: usize) -> usize {
    let _running = enter(GROW_VEC);
    let mut v: Vec<u64> = Vec::new();
    for i in 0..n as u64 {
        v.push(black_box(i));
    }
    let capacity = v.capacity();
    std::mem::forget(black_box(v));
    capacity
}

/// K formatted Strings, each leaked. Returns the sum of their capacities.
#[inline(never)]
fn format_strings(k: usize) -> usize {
    let _running = enter(FORMAT_STRINGS);
    let mut bytes = 0;
    for i in 0..k {
        let s = format!("string {i} of {k}: {:x}/{}", black_box(i) * 2_654_435_761, i % 7);
        bytes += s.capacity();
        std::mem::forget(black_box(s));
    }
    bytes
}

/// A HashMap<u64, u64> with M inserts, leaked. Returns its length.
#[inline(never)]
fn insert_map(m: usize) -> usize {
    let _running = enter(INSERT_MAP);
    let mut map: HashMap<u64, u64> = HashMap::new();
    for i in 0..m as u64 {
        map.insert(black_box(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), i);
    }
    let len = map.len();
    std::mem::forget(black_box(map));
    len
}

fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() {
    let n = arg_f64("--vec", 100_000.0) as usize;
    let k = arg_f64("--strings", 1000.0) as usize;
    let m = arg_f64("--map", 10_000.0) as usize;
    let linger = arg_f64("--linger", 0.5);
    let truth_path = arg_str("--truth");

    let capacity = grow_vec(n);
    let string_bytes = format_strings(k);
    let entries = insert_map(m);

    // Where the API states the size, the counter must agree with it.
    assert_eq!(live(GROW_VEC), ((capacity * 8) as i64, 1), "grow_vec's counter");
    assert_eq!(live(FORMAT_STRINGS), (string_bytes as i64, k as i64), "format_strings' counter");
    assert_eq!(entries, m);
    assert_eq!(live(INSERT_MAP).1, if m > 0 { 1 } else { 0 }, "insert_map's counter");

    let mut report = String::new();
    for (index, name) in FUNCTIONS.iter().enumerate() {
        let (bytes, blocks) = live(index);
        report.push_str(&format!("leak {name} {bytes} {blocks}\n"));
    }
    match truth_path {
        Some(path) => std::fs::write(&path, &report).expect("write --truth"),
        None => {
            let _ = std::io::stderr().write_all(report.as_bytes());
        }
    }
    std::thread::sleep(Duration::from_secs_f64(linger));
}
