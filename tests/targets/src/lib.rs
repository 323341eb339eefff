//! Shared helpers for the rsprof test targets: deterministic busy work.

use std::time::Duration;

/// Spin doing arithmetic until this thread has used a duration of CPU time.
/// A macro, not a function, so the busy loop is charged to the function that
/// uses it. Slices of CPU time (not wall time) keep a known CPU split exact
/// even when the machine is busy and the thread is preempted.
#[macro_export]
macro_rules! spin {
    ($d:expr) => {{
        let budget = ($d).as_nanos() as u64;
        let start = $crate::thread_cpu_ns();
        let mut acc = 0u64;
        while $crate::thread_cpu_ns() - start < budget {
            for i in 0..20000u64 {
                acc = ::std::hint::black_box(acc.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        acc
    }};
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

unsafe extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

/// CPU time used by the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid pointer.
    unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
