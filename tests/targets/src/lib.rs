//! Shared helpers for the rsprof test targets: deterministic busy work.

use std::time::Duration;

/// Spin doing arithmetic until a duration of wall time has passed. A macro,
/// not a function, so the busy loop is charged to the function that uses it.
#[macro_export]
macro_rules! spin {
    ($d:expr) => {{
        let start = ::std::time::Instant::now();
        let mut acc = 0u64;
        while start.elapsed() < $d {
            for i in 0..4000u64 {
                acc = ::std::hint::black_box(acc.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        acc
    }};
}

/// Spin for `d` (a plain function, for targets that do not care where).
#[inline(never)]
pub fn spin_for(d: Duration) -> u64 {
    spin!(d)
}

/// Parse `--seconds N` style arguments: returns the value after `name` or `default`.
pub fn arg_f64(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Print a line and flush, so a test reading stdout sees it at once.
pub fn announce(msg: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}
