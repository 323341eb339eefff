//! User functions whose names contain words that a careless "is this internal
//! code?" rule would hide (free, init, utils, alloc, std), an always-inlined
//! helper inside a never-inlined caller, and a loop calling libc's rand().
//! Shares of time: free_list_walk 40 %, init_tables 30 %, inlined chain 20 %,
//! libc rand 10 %.

use rsprof_test_targets::{announce, arg_f64, spin, thread_cpu_ns};
use std::hint::black_box;
use std::time::{Duration, Instant};

unsafe extern "C" {
    fn rand() -> i32;
}

mod utils {
    use super::*;

    #[inline(never)]
    pub fn free_list_walk() -> u64 {
        spin!(Duration::from_millis(4))
    }

    #[inline(never)]
    pub fn init_tables() -> u64 {
        spin!(Duration::from_millis(3))
    }
}

#[inline(always)]
fn inlined_hot_loop(n: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        acc = black_box(acc.wrapping_mul(31).wrapping_add(i ^ 0x5555));
    }
    acc
}

#[inline(never)]
fn outer_calls_inlined() -> u64 {
    let start = thread_cpu_ns();
    let mut acc = 0;
    while thread_cpu_ns() - start < 2_000_000 {
        acc ^= inlined_hot_loop(20000);
    }
    acc
}

#[inline(never)]
fn call_libc_rand() -> u64 {
    let start = thread_cpu_ns();
    let mut acc = 0u64;
    while thread_cpu_ns() - start < 1_000_000 {
        for _ in 0..1000 {
            acc = acc.wrapping_add(unsafe { rand() } as u64);
        }
    }
    acc
}

fn main() {
    let seconds = arg_f64("--seconds", 60.0);
    announce(&format!("ready {}", std::process::id()));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut acc = 0u64;
    while Instant::now() < end {
        acc ^= utils::free_list_walk();
        acc ^= utils::init_tables();
        acc ^= outer_calls_inlined();
        acc ^= call_libc_rand();
    }
    black_box(acc);
}
