//! Two hot `Display` impls: `<display_pair::Celsius as Display>::fmt` takes
//! 60 % and `<display_pair::Kelvin as Display>::fmt` 40 % of the CPU time of
//! every worker thread (fixed slices of thread CPU time). Profile viewers that
//! shorten names to `fmt` would merge them. `--threads N` workers (default 2)
//! each use `--cpu S` seconds of CPU (default 2.5); at the end the program
//! prints "cpu_s <seconds>", the CPU time the whole process used.

use rsprof_test_targets::{announce, arg_f64, spin, thread_cpu_ns};
use std::fmt;
use std::time::Duration;

struct Celsius(u64);
struct Kelvin(u64);

impl fmt::Display for Celsius {
    #[inline(never)]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = spin!(Duration::from_millis(6));
        write!(f, "{}C", v ^ self.0)
    }
}

impl fmt::Display for Kelvin {
    #[inline(never)]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = spin!(Duration::from_millis(4));
        write!(f, "{}K", v ^ self.0)
    }
}

fn worker(cpu_ns: u64) -> usize {
    let start = thread_cpu_ns();
    let mut len = 0;
    let mut i = 0u64;
    while thread_cpu_ns() - start < cpu_ns {
        len += std::hint::black_box(Celsius(i).to_string()).len();
        len += std::hint::black_box(Kelvin(i).to_string()).len();
        i += 1;
    }
    len
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

unsafe extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

fn process_cpu_s() -> f64 {
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid pointer.
    unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let threads = arg_f64("--threads", 2.0) as usize;
    let cpu_ns = (arg_f64("--cpu", 2.5) * 1e9) as u64;
    announce(&format!("ready {}", std::process::id()));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("display-{i}"))
                .spawn(move || worker(cpu_ns))
                .unwrap()
        })
        .collect();
    let mut len = 0;
    for h in handles {
        len += h.join().unwrap();
    }
    std::hint::black_box(len);
    announce(&format!("cpu_s {:.6}", process_cpu_s()));
}
