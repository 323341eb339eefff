//! The main thread sleeps; after `--delay S` seconds (default 1.5) a thread
//! named "late-worker" starts and burns CPU in `late_thread_work` for
//! `--seconds` (default 60).

use rsprof_test_targets::{announce, arg_f64, spin};
use std::time::Duration;

#[inline(never)]
fn late_thread_work(seconds: f64) -> u64 {
    spin!(Duration::from_secs_f64(seconds))
}

fn main() {
    let delay = arg_f64("--delay", 1.5);
    let seconds = arg_f64("--seconds", 60.0);
    announce(&format!("ready {}", std::process::id()));
    std::thread::sleep(Duration::from_secs_f64(delay));
    let h = std::thread::Builder::new()
        .name("late-worker".into())
        .spawn(move || late_thread_work(seconds))
        .unwrap();
    announce("spawned");
    std::hint::black_box(h.join().unwrap());
}
