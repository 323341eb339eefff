//! Known CPU split: work_fifty / work_thirty / work_twenty take 50/30/20 % of
//! the CPU time of every worker thread, by running for slices of 5u, 3u and 2u
//! of CPU time in a loop. `--threads N` workers (default 1), `--seconds S` total
//! (default 60).
//!
//! The unit u is drawn afresh for every cycle, uniformly from 0.2..1.8 ms, so
//! the cycle (2..18 ms) has no fixed length a sampling period could stay in step
//! with: with a fixed 10 ms cycle, 99 Hz (10.1 ms) and 499 Hz (2.004 ms) sampled
//! almost the same phase for seconds, and per-second shares swung by up to 57
//! points at 99 Hz (now: no more than the binomial noise of ~99 samples).
//! Every cycle is still exactly 50/30/20.

use rsprof_test_targets::{announce, arg_f64, spin};
use std::time::{Duration, Instant};

#[inline(never)]
fn work_fifty(unit: Duration) -> u64 {
    spin!(unit * 5)
}

#[inline(never)]
fn work_thirty(unit: Duration) -> u64 {
    spin!(unit * 3)
}

#[inline(never)]
fn work_twenty(unit: Duration) -> u64 {
    spin!(unit * 2)
}

/// xorshift64: the cycle lengths, seeded per thread.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn worker(seconds: f64, seed: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut acc = 0u64;
    let mut state = seed | 1;
    while Instant::now() < end {
        let unit = Duration::from_micros(200 + next(&mut state) % 1600);
        acc ^= work_fifty(unit);
        acc ^= work_thirty(unit);
        acc ^= work_twenty(unit);
    }
    acc
}

fn main() {
    let threads = arg_f64("--threads", 1.0) as usize;
    let seconds = arg_f64("--seconds", 60.0);
    announce(&format!("ready {}", std::process::id()));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("split-{i}"))
                .spawn(move || worker(seconds, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1) * 0x2545_F491))
                .unwrap()
        })
        .collect();
    let mut acc = 0;
    for h in handles {
        acc ^= h.join().unwrap();
    }
    std::hint::black_box(acc);
}
