//! Stale return addresses on the stack (docs/attribution.md, "Frame-pointer
//! stacks"): first `plant` recurses `--plant` levels deep, allocating a Box
//! at every level, which leaves return addresses into `plant` all over the
//! stack; it returns and never runs again. Then "ready PID" is printed and,
//! for `--seconds`, a binary-trees loop runs: `create` builds a complete tree
//! of `--depth` (a Box per node, left and right children from different call
//! sites), `check` walks it, and it is dropped (recursive free). libc's
//! malloc and free keep no frame pointers and leave slots of their frames
//! unwritten, so the stack above their stack pointer holds stale return
//! addresses into `plant` and into deeper `create`/`check` calls: a profiler
//! that takes such a word for the caller charges time to `plant`, which is
//! not running.

use rsprof_test_targets::{announce, arg_f64};
use std::hint::black_box;
use std::time::{Duration, Instant};

struct Node {
    left: Option<Box<Node>>,
    right: Option<Box<Node>>,
}

struct Link {
    _payload: [u64; 3],
    next: Option<Box<Link>>,
}

#[inline(never)]
fn plant(n: u32) -> Option<Box<Link>> {
    if n == 0 {
        return None;
    }
    let head = black_box(Box::new(Link { _payload: [n as u64; 3], next: None }));
    let next = plant(n - 1);
    let mut head = head;
    head.next = next;
    Some(black_box(head))
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
    let node = create(depth);
    black_box(node)
}

#[inline(never)]
fn check(node: &Node) -> u64 {
    1 + node.left.as_deref().map_or(0, check) + node.right.as_deref().map_or(0, check)
}

#[inline(never)]
fn unlink(mut list: Option<Box<Link>>) {
    // Iteratively, so dropping the planted list does not recurse.
    while let Some(mut link) = list {
        list = link.next.take();
    }
}

fn main() {
    let planted = arg_f64("--plant", 3000.0) as u32;
    let depth = arg_f64("--depth", 14.0) as u32;
    let seconds = arg_f64("--seconds", 60.0);
    unlink(black_box(plant(planted)));
    announce(&format!("ready {}", std::process::id()));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut nodes = 0u64;
    while Instant::now() < end {
        let tree = create(depth);
        nodes += check(&tree);
        drop(black_box(tree));
    }
    announce(&format!("nodes {nodes}"));
}
