//! Two leaks at known times, for tests of the heap time windows.
//!
//! `leak_early` leaks one block of EARLY_SIZE bytes 0.3 s after start,
//! `leak_late` one block of LATE_SIZE bytes 2.4 s after start; the program
//! exits 3.5 s after start. Nothing else is allocated on purpose (no output:
//! stdout's buffer would be an allocation of its own).
//! `--early S`, `--late S` and `--end S` move the three times.

use rsprof_test_targets::arg_f64;
use std::time::{Duration, Instant};

const EARLY_SIZE: usize = 24_576;
const LATE_SIZE: usize = 57_344;

#[inline(never)]
fn leak_early() {
    let v: Vec<u8> = Vec::with_capacity(EARLY_SIZE);
    std::mem::forget(std::hint::black_box(v)); // black_box: the allocation must happen
}

#[inline(never)]
fn leak_late() {
    let v: Vec<u8> = Vec::with_capacity(LATE_SIZE);
    std::mem::forget(std::hint::black_box(v));
}

fn sleep_until(start: Instant, at_s: f64) {
    let at = Duration::from_secs_f64(at_s);
    let elapsed = start.elapsed();
    if at > elapsed {
        std::thread::sleep(at - elapsed);
    }
}

fn main() {
    let start = Instant::now();
    let early = arg_f64("--early", 0.3);
    let late = arg_f64("--late", 2.4);
    let end = arg_f64("--end", 3.5);
    sleep_until(start, early);
    leak_early();
    sleep_until(start, late);
    leak_late();
    sleep_until(start, end);
}
