//! One hot leaf reached through two callers in a known 70/30 split, for testing
//! call stacks of a release build WITHOUT frame pointers (DWARF CFI unwinding,
//! tests/integration/test_unwind_cfi.py and bench/cpu_unwind.py).
//!
//! All the CPU is in `leaf`, a pure integer loop (xorshift; no clock calls, no
//! allocation, no libc). `stage_seventy` calls it for 7k iterations and
//! `stage_thirty` for 3k, one after the other, every cycle: so the inclusive
//! (total) share of `stage_seventy` is 70 % and of `stage_thirty` 30 %, while
//! the self share of both is ~0. Only a profiler that finds the leaf's caller
//! gets those numbers; a leaf-only stack gives both stages ~0.
//!
//! Both stages use the leaf's result after the call, so the call is a real
//! call (not a tail jump) and the caller's frame is on the stack when sampled.
//! The leaf keeps a 1 KiB scratch table on its stack, so its caller's return
//! address lies more than 512 bytes above the stack pointer: beyond the copy
//! that `--unwind fp` takes (rsprof/recording/perf_session.py FP_STACK_BYTES)
//! for its validated scan for callers in code without frame pointers
//! (docs/attribution.md). With frame pointers only, the stages therefore get
//! (nearly) nothing; CFI unwinding over the default 16 KiB copy finds them.
//! The always-inlined `xorshift_step` shows as an inlined frame of `leaf`.
//!
//! k is drawn afresh for every cycle, uniformly from 0.2..1.8 times `--k K`
//! (default 60000: cycles of 2 ms on average, 0.4..3.6 ms, on a 3 GHz x86-64),
//! so the cycle has no fixed length a sampling period could stay in step with
//! (see cpu_split.rs). Every cycle is still exactly 70/30 in iterations of the
//! same loop.
//!
//! `--threads N` workers (default 1), `--seconds S` of wall time (default 60,
//! checked once per cycle). Prints "ready <pid>" at start.

use rsprof_test_targets::{announce, arg_f64};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// One xorshift64 step: always inlined into `leaf`'s loop.
#[inline(always)]
fn xorshift_step(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// The only hot function: `n` xorshift steps, mixed with a 1 KiB table on
/// this function's own stack frame (see the module comment for why). No calls.
#[inline(never)]
fn leaf(n: u64, seed: u64) -> u64 {
    let mut table = [seed.rotate_left(32); 128];
    let table = black_box(&mut table);
    let mut x = black_box(seed) | 1;
    for _ in 0..black_box(n) {
        x = xorshift_step(x);
        x ^= table[(x & 127) as usize];
    }
    black_box(x)
}

#[inline(never)]
fn stage_seventy(k: u64, x: u64) -> u64 {
    black_box(leaf(7 * k, x)).rotate_left(1) ^ x
}

#[inline(never)]
fn stage_thirty(k: u64, x: u64) -> u64 {
    black_box(leaf(3 * k, x)).rotate_left(3) ^ x
}

/// xorshift64 for the cycle lengths, seeded per thread.
fn next(state: &mut u64) -> u64 {
    *state = xorshift_step(*state);
    *state
}

fn worker(k: u64, seconds: f64, seed: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut acc = seed;
    let mut state = seed | 1;
    while Instant::now() < end {
        let this_k = k / 5 + next(&mut state) % (k * 8 / 5 + 1);
        acc = stage_seventy(this_k, acc);
        acc = stage_thirty(this_k, acc);
    }
    acc
}

fn main() {
    let threads = arg_f64("--threads", 1.0) as usize;
    let seconds = arg_f64("--seconds", 60.0);
    let k = arg_f64("--k", 60000.0) as u64;
    announce(&format!("ready {}", std::process::id()));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("callers-{i}"))
                .spawn(move || worker(k, seconds, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1) * 0x2545_F491))
                .unwrap()
        })
        .collect();
    let mut acc = 0;
    for h in handles {
        acc ^= h.join().unwrap();
    }
    black_box(acc);
}
