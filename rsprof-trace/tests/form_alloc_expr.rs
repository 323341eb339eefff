//! `profiler!(alloc: Type = <expression>, cpu = N)` (interior mutability allowed).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Allocations that reached `Tagged` (any instance), for the test to read.
static REACHED: AtomicUsize = AtomicUsize::new(0);

pub struct Tagged {
    calls: AtomicUsize,
}

impl Tagged {
    pub const fn new() -> Self {
        Tagged { calls: AtomicUsize::new(0) }
    }
}

unsafe impl GlobalAlloc for Tagged {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        REACHED.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

rsprof_trace::profiler!(alloc: Tagged = Tagged::new(), cpu = 31);

#[test]
fn expression_allocator_is_used() {
    let before = REACHED.load(Ordering::Relaxed);
    let b = std::hint::black_box(Box::new([1u8; 64]));
    let after = REACHED.load(Ordering::Relaxed);

    assert_eq!(b[63], 1);
    // The Box came from the allocator the expression built (through the recording
    // wrapper with `heap`, as is without it), not from the system allocator.
    assert!(after > before, "the allocation did not reach Tagged ({before} -> {after})");
    #[cfg(feature = "cpu")]
    assert_eq!(RSPROF_TRACE_CPU_HZ, 31);
}
