//! A fixed amount of CPU work for overhead benchmarks: `--threads N` workers
//! each run `--rounds R` rounds of a frame-pointer-friendly call chain. It
//! prints "ready", waits `--delay S` seconds (so a profiler can attach), then
//! prints "elapsed <seconds>" for the work alone and exits.

use rsprof_test_targets::{announce, arg_f64};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[inline(never)]
fn mix(mut x: u64, n: u64) -> u64 {
    for i in 0..n {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i ^ (x >> 7)));
    }
    x
}

#[inline(never)]
fn stage_b(x: u64) -> u64 {
    mix(x, 3000) ^ mix(x.rotate_left(9), 2000)
}

#[inline(never)]
fn stage_a(x: u64) -> u64 {
    stage_b(x) ^ mix(x, 1000)
}

fn worker(rounds: u64, seed: u64) -> u64 {
    let mut acc = seed;
    for _ in 0..rounds {
        acc = stage_a(acc);
    }
    acc
}

fn main() {
    let threads = arg_f64("--threads", 2.0) as u64;
    let rounds = arg_f64("--rounds", 100000.0) as u64;
    let delay = arg_f64("--delay", 1.0);
    announce(&format!("ready {}", std::process::id()));
    std::thread::sleep(Duration::from_secs_f64(delay));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| std::thread::spawn(move || worker(rounds, t + 1)))
        .collect();
    let acc = handles.into_iter().fold(0, |a, h| a ^ h.join().unwrap());
    black_box(acc);
    announce(&format!("elapsed {:.6}", start.elapsed().as_secs_f64()));
}
