//! Known CPU split: work_fifty / work_thirty / work_twenty take 50/30/20 % of
//! the CPU time of every worker thread, by running for fixed slices of time in
//! a loop. `--threads N` workers (default 1), `--seconds S` total (default 60).

use rsprof_test_targets::{announce, arg_f64, spin};
use std::time::{Duration, Instant};

#[inline(never)]
fn work_fifty() -> u64 {
    spin!(Duration::from_millis(5))
}

#[inline(never)]
fn work_thirty() -> u64 {
    spin!(Duration::from_millis(3))
}

#[inline(never)]
fn work_twenty() -> u64 {
    spin!(Duration::from_millis(2))
}

fn worker(seconds: f64) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut acc = 0u64;
    while Instant::now() < end {
        acc ^= work_fifty();
        acc ^= work_thirty();
        acc ^= work_twenty();
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
                .spawn(move || worker(seconds))
                .unwrap()
        })
        .collect();
    let mut acc = 0;
    for h in handles {
        acc ^= h.join().unwrap();
    }
    std::hint::black_box(acc);
}
