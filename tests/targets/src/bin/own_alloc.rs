//! A program with its own `#[global_allocator]` that never calls libc malloc,
//! as jemalloc or mimalloc builds (and rustc) are: power-of-two size classes
//! carved from `mmap` chunks, with a free list per class. The work is
//! CPU-heavy Rust code that allocates a lot (Vec and String in `build_words`
//! and `sort_words`) for `--seconds` seconds (default 1.5). Under `rsprof run`
//! the LD_PRELOAD shim sees none of these allocations; rsprof must say so
//! instead of showing an empty heap. Prints "ready" first and "done <checksum>"
//! at the end.

use rsprof_test_targets::{announce, arg_f64};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CHUNK: usize = 4 << 20;
const MIN_SHIFT: u32 = 4; // 16-byte blocks
const CLASSES: usize = 13; // up to 64 KiB; larger blocks get a mapping of their own
const PROT_READ: i32 = 1;
const PROT_WRITE: i32 = 2;
const MAP_PRIVATE: i32 = 0x02;
const MAP_ANONYMOUS: i32 = 0x20;

unsafe extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn munmap(addr: *mut u8, len: usize) -> i32;
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
    let p = unsafe {
        mmap(std::ptr::null_mut(), len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
             -1, 0)
    };
    if p as isize == -1 { std::ptr::null_mut() } else { p }
}

struct State {
    cursor: usize,
    end: usize,
    free: [usize; CLASSES], // heads of singly linked free lists (0: empty)
}

/// A spin lock around the size-class state: simple, and never calls malloc.
struct Pool {
    locked: AtomicBool,
    state: UnsafeCell<State>,
}

// SAFETY: `state` is only touched while `locked` is held.
unsafe impl Sync for Pool {}

fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT).next_power_of_two();
    let class = (size.trailing_zeros() - MIN_SHIFT) as usize;
    (class < CLASSES).then_some(class)
}

fn big_len(layout: Layout) -> usize {
    (layout.size() + 4095) & !4095
}

impl Pool {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire,
                                                Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        // SAFETY: the lock is held.
        let r = f(unsafe { &mut *self.state.get() });
        self.locked.store(false, Ordering::Release);
        r
    }
}

unsafe impl GlobalAlloc for Pool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // Page-aligned mappings; larger alignments are not needed here.
            return if layout.align() > 4096 { std::ptr::null_mut() } else { map(big_len(layout)) };
        };
        let size = 1usize << (class as u32 + MIN_SHIFT);
        self.with(|s| {
            let head = s.free[class];
            if head != 0 {
                // SAFETY: a free block holds the address of the next one.
                s.free[class] = unsafe { *(head as *const usize) };
                return head as *mut u8;
            }
            let mut start = (s.cursor + size - 1) & !(size - 1);
            if s.cursor == 0 || start + size > s.end {
                let chunk = map(CHUNK);
                if chunk.is_null() {
                    return chunk;
                }
                s.cursor = chunk as usize;
                s.end = s.cursor + CHUNK;
                start = (s.cursor + size - 1) & !(size - 1);
            }
            s.cursor = start + size;
            start as *mut u8
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(class) => self.with(|s| {
                // SAFETY: the block is ours again and at least 16 bytes long.
                unsafe { *(ptr as *mut usize) = s.free[class] };
                s.free[class] = ptr as usize;
            }),
            // SAFETY: a mapping of this length made by `alloc`.
            None => unsafe {
                munmap(ptr, big_len(layout));
            },
        }
    }
}

#[global_allocator]
static GLOBAL: Pool = Pool {
    locked: AtomicBool::new(false),
    state: UnsafeCell::new(State { cursor: 0, end: 0, free: [0; CLASSES] }),
};

#[inline(never)]
fn build_words(seed: u64, n: usize) -> Vec<String> {
    let mut x = seed;
    let mut words = Vec::new();
    for _ in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        words.push(format!("w{:x}-{}", x >> 20, x % 977));
    }
    words
}

#[inline(never)]
fn sort_words(mut words: Vec<String>) -> u64 {
    words.sort();
    let joined: String = words.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(",");
    joined.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
}

fn main() {
    let seconds = arg_f64("--seconds", 1.5);
    announce("ready");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut sum = 0u64;
    let mut round = 0u64;
    while Instant::now() < deadline {
        sum ^= sort_words(build_words(black_box(round), 2000));
        round += 1;
    }
    announce(&format!("done {sum:x}"));
}
