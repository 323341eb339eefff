//! The heap micro-benchmark: 10 million small alloc/free pairs (16..80 bytes)
//! through a shallow call chain, single-threaded. Prints "elapsed <s>".
//! `--seconds S` churns for S seconds instead (for lifecycle tests);
//! `--threads N` splits the pairs over N threads.

use rsprof_test_targets::{announce, arg_f64};
use std::hint::black_box;
use std::time::Instant;

#[inline(never)]
fn make(size: usize) -> Vec<u8> {
    Vec::with_capacity(size)
}

#[inline(never)]
fn churn(n: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        let v = make(16 + (i % 65) as usize);
        acc = acc.wrapping_add(black_box(v.capacity()) as u64);
        drop(black_box(v));
    }
    acc
}

fn main() {
    let pairs = arg_f64("--pairs", 10_000_000.0) as u64;
    let delay = arg_f64("--delay", 0.0);
    announce(&format!("ready {}", std::process::id()));
    if delay > 0.0 {
        std::thread::sleep(std::time::Duration::from_secs_f64(delay));
    }
    let seconds = arg_f64("--seconds", 0.0);
    let start = Instant::now();
    if seconds > 0.0 {
        // Churn for a wall-clock time instead of a pair count (lifecycle tests).
        let mut rounds = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            black_box(churn(100_000));
            rounds += 1;
        }
        announce(&format!("rounds {rounds}"));
    } else {
        let threads = arg_f64("--threads", 1.0).max(1.0) as u64;
        let per_thread = pairs / threads;
        let handles: Vec<_> = (0..threads)
            .map(|_| std::thread::spawn(move || black_box(churn(per_thread))))
            .collect();
        for h in handles {
            black_box(h.join().unwrap());
        }
    }
    announce(&format!("elapsed {:.6}", start.elapsed().as_secs_f64()));
    // Peak resident memory of this process, for the profilers' memory overhead.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        announce(&format!("maxrss_kb {}", line.split_whitespace().nth(1).unwrap_or("0")));
    }
}
