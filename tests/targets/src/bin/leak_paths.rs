//! One leaking line, and one busy function, reached through many call stacks.
//!
//! `leak_here` leaks one block of LEAK_SIZE bytes on a single line. It is
//! called LEAK_COUNT times through PATHS distinct stacks: two different
//! callers (`via_left`, `via_right`) times DEPTHS recursion depths of
//! `descend`, each stack used LEAK_COUNT / PATHS times. A profile must show
//! one site (that line) holding LEAK_COUNT x LEAK_SIZE bytes, not one row per
//! stack. Nothing else is freed or leaked on purpose (no output: stdout's
//! buffer would be an allocation of its own).
//!
//! With `--spin S`, it first spends S seconds of CPU in `burn`, reached
//! through the same PATHS stacks (S / PATHS each, round after round), so CPU
//! samples of one line also come from many stacks within one interval. Then
//! it sleeps `--linger` seconds (default 0.5) so a profiler can read its maps.

use rsprof_test_targets::{arg_f64, spin};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const LEAK_COUNT: usize = 500;
const LEAK_SIZE: usize = 1024;
const DEPTHS: usize = 25;
const PATHS: usize = 2 * DEPTHS;
const SPIN_ROUNDS: u64 = 4;

static BURN_NS: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn leak_here() -> usize {
    let v: Vec<u8> = Vec::with_capacity(LEAK_SIZE); // the leaking line
    let p = v.as_ptr() as usize;
    std::mem::forget(black_box(v)); // black_box: the allocation must happen
    p
}

#[inline(never)]
fn burn() -> usize {
    spin!(Duration::from_nanos(BURN_NS.load(Ordering::Relaxed))) as usize
}

/// Recurse `depth` more times, then call `leaf`: each depth is a different stack.
#[inline(never)]
fn descend(depth: usize, leaf: fn() -> usize) -> usize {
    if black_box(depth) == 0 {
        return leaf();
    }
    // Not a tail call (the result is used after it), so each level keeps a frame.
    let p = descend(depth - 1, leaf);
    black_box(p) ^ black_box(depth)
}

#[inline(never)]
fn via_left(depth: usize, leaf: fn() -> usize) -> usize {
    black_box(descend(depth, leaf)) + 1
}

#[inline(never)]
fn via_right(depth: usize, leaf: fn() -> usize) -> usize {
    black_box(descend(depth, leaf)) + 2
}

fn on_path(path: usize, leaf: fn() -> usize) -> usize {
    let depth = path / 2;
    if path % 2 == 0 { via_left(depth, leaf) } else { via_right(depth, leaf) }
}

fn main() {
    let spin_s = arg_f64("--spin", 0.0);
    let linger = arg_f64("--linger", 0.5);
    let mut acc = 0usize;
    if spin_s > 0.0 {
        let slice = (spin_s * 1e9) as u64 / (SPIN_ROUNDS * PATHS as u64);
        BURN_NS.store(slice, Ordering::Relaxed);
        for _ in 0..SPIN_ROUNDS {
            for path in 0..PATHS {
                acc ^= on_path(path, burn);
            }
        }
    }
    for i in 0..LEAK_COUNT {
        acc ^= on_path(i % PATHS, leak_here);
    }
    black_box(acc);
    std::thread::sleep(Duration::from_secs_f64(linger));
}
