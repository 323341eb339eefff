//! Known heap behaviour for exactness tests.
//!
//! 8 threads each allocate ROUNDS blocks of 100+t bytes in `alloc_block`;
//! every other block is freed by the allocating thread, the rest are sent to
//! a collector thread that frees them (frees on another thread). Blocks of
//! 64-byte alignment go through `aligned_block` (posix_memalign), zeroed ones
//! through `zeroed_block` (calloc), and `grow_block` reallocs. Finally
//! `leak_known` leaks exactly LEAK_COUNT blocks of LEAK_SIZE bytes.
//! Prints "ready" after a short start delay and "done" at the end, then
//! sleeps `--linger` seconds so a profiler can read the maps after the work.

use rsprof_test_targets::{announce, arg_f64};
use std::alloc::{Layout, alloc, alloc_zeroed, dealloc, realloc};
use std::sync::mpsc;
use std::time::Duration;

const THREADS: usize = 8;
const ROUNDS: usize = 1000;
const LEAK_COUNT: usize = 100;
const LEAK_SIZE: usize = 4096;

struct Block(*mut u8, Layout);
unsafe impl Send for Block {}

#[inline(never)]
fn alloc_block(size: usize) -> Block {
    let layout = Layout::from_size_align(size, 8).unwrap();
    Block(unsafe { alloc(layout) }, layout)
}

#[inline(never)]
fn aligned_block(size: usize) -> Block {
    let layout = Layout::from_size_align(size, 64).unwrap();
    Block(unsafe { alloc(layout) }, layout)
}

#[inline(never)]
fn zeroed_block(size: usize) -> Block {
    let layout = Layout::from_size_align(size, 8).unwrap();
    Block(unsafe { alloc_zeroed(layout) }, layout)
}

#[inline(never)]
fn grow_block(b: Block, new_size: usize) -> Block {
    let p = unsafe { realloc(b.0, b.1, new_size) };
    Block(p, Layout::from_size_align(new_size, b.1.align()).unwrap())
}

fn release(b: Block) {
    unsafe { dealloc(b.0, b.1) }
}

#[inline(never)]
fn leak_known() {
    for _ in 0..LEAK_COUNT {
        let v: Vec<u8> = Vec::with_capacity(LEAK_SIZE);
        std::mem::forget(std::hint::black_box(v)); // black_box: the allocation must happen
    }
}

fn worker(t: usize, to_collector: mpsc::Sender<Block>) {
    for i in 0..ROUNDS {
        let b = alloc_block(100 + t);
        if i % 2 == 0 {
            release(b);
        } else {
            to_collector.send(b).unwrap();
        }
        release(aligned_block(256));
        release(zeroed_block(48));
        let g = grow_block(alloc_block(16), 4000);
        release(g);
    }
}

fn main() {
    let linger = arg_f64("--linger", 0.5);
    std::thread::sleep(Duration::from_millis(300));
    announce(&format!("ready {}", std::process::id()));
    let (tx, rx) = mpsc::channel::<Block>();
    let collector = std::thread::spawn(move || {
        let mut n = 0usize;
        for b in rx {
            release(b);
            n += 1;
        }
        n
    });
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || worker(t, tx))
        })
        .collect();
    drop(tx);
    for w in workers {
        w.join().unwrap();
    }
    let collected = collector.join().unwrap();
    leak_known();
    announce(&format!("done {collected}"));
    std::thread::sleep(Duration::from_secs_f64(linger));
}
