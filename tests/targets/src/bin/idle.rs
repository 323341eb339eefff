//! Sleeps for `--seconds` (default 60) and exits 0: a process to attach to
//! that does nothing, or that exits while being recorded.

use rsprof_test_targets::{announce, arg_f64, spin_for};
use std::time::Duration;

fn main() {
    let seconds = arg_f64("--seconds", 60.0);
    let busy = arg_f64("--busy", 0.0);
    announce(&format!("ready {}", std::process::id()));
    if busy > 0.0 {
        std::hint::black_box(spin_for(Duration::from_secs_f64(seconds)));
    } else {
        std::thread::sleep(Duration::from_secs_f64(seconds));
    }
}
