//! trace_app: a known allocation pattern for rsprof-trace's tests.
//!
//! `leaky_site` leaks one 1000-byte block every 10 ms (and nothing else);
//! `churn` allocates and frees; `spin` burns CPU. Prints "ready <pid>" and
//! runs until killed (or for the seconds given as the first argument). With a
//! second argument N, a thread named "late-spin" starts after N milliseconds
//! and spins (`late_spin`, never allocating) until the end.
//!
//! With `--features profiling` and the argument `--leak-kinds` instead: prints
//! "ready <pid>", waits (at most 60 s) until a reader records it
//! (`rsprof_trace::recording()`), then leaks through std's allocation paths
//! as tests/targets' `leak_kinds` does: `grow_vec` (a Vec of 100000 u64 grown
//! by pushes, i.e. realloc), `format_strings` (1000 `format!`ed Strings) and
//! `insert_map` (a HashMap<u64, u64> with 10000 inserts), each leaked. The
//! truth, counted by `Counting`, the allocator rsprof-trace's wrapper wraps
//! here (charging every allocation and free to the one of those functions
//! running on the thread; realloc = free + alloc), is printed as one line per
//! function, `leak <function> <live bytes> <live blocks>`, then "done"; then
//! it idles until killed. `Counting` is called and has returned before the
//! wrapper records, so it is never on a recorded stack.
#[cfg(feature = "profiling")]
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[cfg(all(not(feature = "no_macro"), not(feature = "profiling")))]
rsprof_trace::profiler!();

#[cfg(all(not(feature = "no_macro"), feature = "profiling"))]
rsprof_trace::profiler!(alloc = leak_kinds::Counting);

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
    #[cfg(feature = "profiling")]
    if std::env::args().any(|a| a == "--leak-kinds") {
        leak_kinds::run();
        return;
    }
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

#[cfg(feature = "profiling")]
#[inline(never)]
fn grow_vec(n: usize) -> usize {
    let _running = leak_kinds::enter(leak_kinds::GROW_VEC);
    let mut v: Vec<u64> = Vec::new();
    for i in 0..n as u64 {
        v.push(black_box(i));
    }
    let capacity = v.capacity();
    std::mem::forget(black_box(v));
    capacity
}

#[cfg(feature = "profiling")]
#[inline(never)]
fn format_strings(k: usize) -> usize {
    let _running = leak_kinds::enter(leak_kinds::FORMAT_STRINGS);
    let mut bytes = 0;
    for i in 0..k {
        let s = format!("string {i} of {k}: {:x}/{}", black_box(i) * 2_654_435_761, i % 7);
        bytes += s.capacity();
        std::mem::forget(black_box(s));
    }
    bytes
}

#[cfg(feature = "profiling")]
#[inline(never)]
fn insert_map(m: usize) -> usize {
    let _running = leak_kinds::enter(leak_kinds::INSERT_MAP);
    let mut map: HashMap<u64, u64> = HashMap::new();
    for i in 0..m as u64 {
        map.insert(black_box(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), i);
    }
    let len = map.len();
    std::mem::forget(black_box(map));
    len
}

/// `--leak-kinds` (profiling builds only): see the module comment.
#[cfg(feature = "profiling")]
mod leak_kinds {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::io::Write;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::{Duration, Instant};

    const FUNCTIONS: [&str; 3] = ["grow_vec", "format_strings", "insert_map"];
    pub const GROW_VEC: usize = 0;
    pub const FORMAT_STRINGS: usize = 1;
    pub const INSERT_MAP: usize = 2;
    const NOBODY: usize = usize::MAX;

    thread_local! {
        /// Index into FUNCTIONS of the function running on this thread.
        static CURRENT: Cell<usize> = const { Cell::new(NOBODY) };
    }

    static LIVE_BYTES: [AtomicI64; 3] = [const { AtomicI64::new(0) }; 3];
    static LIVE_BLOCKS: [AtomicI64; 3] = [const { AtomicI64::new(0) }; 3];

    fn charge(bytes: i64, blocks: i64) {
        let current = CURRENT.try_with(Cell::get).unwrap_or(NOBODY);
        if current != NOBODY {
            LIVE_BYTES[current].fetch_add(bytes, Ordering::Relaxed);
            LIVE_BLOCKS[current].fetch_add(blocks, Ordering::Relaxed);
        }
    }

    /// `System`, counting per function; rsprof-trace's `Traced` wraps it.
    pub struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            charge(layout.size() as i64, 1);
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            charge(layout.size() as i64, 1);
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            charge(-(layout.size() as i64), -1);
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            charge(new_size as i64 - layout.size() as i64, 0);
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Charges this thread's allocations to FUNCTIONS[index] until dropped.
    pub struct Running;

    pub fn enter(index: usize) -> Running {
        CURRENT.with(|c| c.set(index));
        Running
    }

    impl Drop for Running {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(NOBODY));
        }
    }

    fn live(index: usize) -> (i64, i64) {
        (LIVE_BYTES[index].load(Ordering::Relaxed), LIVE_BLOCKS[index].load(Ordering::Relaxed))
    }

    pub fn run() {
        let (n, k, m) = (100_000, 1000, 10_000);
        println!("ready {}", std::process::id());
        let deadline = Instant::now() + Duration::from_secs(60);
        while !rsprof_trace::recording() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let capacity = crate::grow_vec(n);
        let string_bytes = crate::format_strings(k);
        let entries = crate::insert_map(m);
        // Where the API states the size, the counter must agree with it.
        assert_eq!(live(GROW_VEC), ((capacity * 8) as i64, 1), "grow_vec's counter");
        assert_eq!(live(FORMAT_STRINGS), (string_bytes as i64, k as i64), "format_strings'");
        assert_eq!((entries, live(INSERT_MAP).1), (m, 1), "insert_map's counter");
        let mut report = String::new();
        for (index, name) in FUNCTIONS.iter().enumerate() {
            let (bytes, blocks) = live(index);
            report.push_str(&format!("leak {name} {bytes} {blocks}\n"));
        }
        report.push_str("done\n");
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(report.as_bytes());
        let _ = out.flush();
        drop(out);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
