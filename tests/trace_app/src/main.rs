//! trace_app: a known allocation pattern for rsprof-trace's tests.
//!
//! `leaky_site` leaks one 1000-byte block every 10 ms (and nothing else);
//! `churn` allocates and frees; `spin` burns CPU. Prints "ready <pid>" and
//! runs until killed (or for the seconds given as the first argument). With a
//! second argument N, a thread named "late-spin" starts after N milliseconds
//! and spins (`late_spin`, never allocating) until the end.
use std::hint::black_box;
use std::time::{Duration, Instant};

#[cfg(not(feature = "no_macro"))]
rsprof_trace::profiler!();

#[inline(never)]
fn leaky_site() {
    let block: Vec<u8> = black_box(vec![0x5a; 1000]);
    std::mem::forget(block);
}

#[inline(never)]
fn churn(round: u64) -> u64 {
    let v: Vec<u64> = black_box((0..64).map(|i| i * round).collect());
    v.iter().sum()
}

#[inline(never)]
fn spin(until: Instant) -> u64 {
    let mut x = 1u64;
    while Instant::now() < until {
        for _ in 0..10_000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
        }
    }
    x
}

#[inline(never)]
fn late_spin(until: Instant) -> u64 {
    spin(until)
}

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3600);
    let late_ms: Option<u64> = std::env::args().nth(2).and_then(|s| s.parse().ok());
    let end = Instant::now() + Duration::from_secs(seconds);
    println!("ready {}", std::process::id());
    let late_at = late_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut late = None;
    let mut round = 0u64;
    let mut acc = 0u64;
    while Instant::now() < end {
        if late.is_none() && late_at.is_some_and(|at| Instant::now() >= at) {
            let spawned = std::thread::Builder::new()
                .name("late-spin".into())
                .spawn(move || black_box(late_spin(end)));
            late = Some(spawned.expect("spawn late-spin"));
        }
        leaky_site();
        acc = acc.wrapping_add(churn(round));
        acc = acc.wrapping_add(spin(Instant::now() + Duration::from_millis(2)));
        std::thread::sleep(Duration::from_millis(8));
        round += 1;
    }
    if let Some(handle) = late {
        acc = acc.wrapping_add(handle.join().unwrap_or(0));
    }
    black_box(acc);
}
