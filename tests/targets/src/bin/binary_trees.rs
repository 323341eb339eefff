//! A binary-trees-shaped allocation storm (the benchmarks game's shape):
//! `--iterations` times, build a complete tree of `--depth` by recursion, each
//! node its own Box (16 bytes: two child pointers), check it, drop it. Left and
//! right children are made from different call sites, so every node's
//! allocation stack is distinct: 2^(depth+1) - 1 stacks. Then leaks
//! `--leaks` (25) blocks of 48 bytes at `leak_known`. `--threads N` runs the
//! iterations on N threads. Prints "elapsed <s>", "allocs <n>" and "maxrss_kb <k>".

use rsprof_test_targets::{announce, arg_f64};
use std::hint::black_box;
use std::time::Instant;

struct Node {
    left: Option<Box<Node>>,
    right: Option<Box<Node>>,
}

#[inline(never)]
fn create(depth: u32) -> Box<Node> {
    if depth == 0 {
        return Box::new(Node { left: None, right: None });
    }
    let left = create_left(depth - 1);
    let right = create_right(depth - 1);
    Box::new(Node { left: Some(left), right: Some(right) })
}

#[inline(never)]
fn create_left(depth: u32) -> Box<Node> {
    black_box(create(depth))
}

#[inline(never)]
fn create_right(depth: u32) -> Box<Node> {
    black_box(create(depth))
}

fn check(node: &Node) -> u64 {
    1 + node.left.as_deref().map_or(0, check) + node.right.as_deref().map_or(0, check)
}

#[inline(never)]
fn leak_known(n: usize) {
    for i in 0..n {
        std::mem::forget(black_box(vec![i as u8; 48]));
    }
}

fn main() {
    let depth = arg_f64("--depth", 16.0) as u32;
    let iterations = arg_f64("--iterations", 100.0) as u64;
    let threads = arg_f64("--threads", 1.0).max(1.0) as u64;
    let leaks = arg_f64("--leaks", 25.0) as usize;
    announce(&format!("ready {}", std::process::id()));
    let start = Instant::now();
    let per_thread = iterations / threads;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut nodes = 0u64;
                for _ in 0..per_thread {
                    let tree = create(depth);
                    nodes += check(&tree);
                    drop(black_box(tree));
                }
                nodes
            })
        })
        .collect();
    let nodes: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    leak_known(leaks);
    announce(&format!("elapsed {:.6}", start.elapsed().as_secs_f64()));
    announce(&format!("allocs {nodes}"));
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        announce(&format!("maxrss_kb {}", line.split_whitespace().nth(1).unwrap_or("0")));
    }
}
