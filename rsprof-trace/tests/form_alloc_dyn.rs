//! `profiler!(alloc = <expression>)`: a non-path expression, held as `&dyn GlobalAlloc`.
use std::alloc::{GlobalAlloc, Layout, System};

pub struct Plain {
    _arena: usize,
}

impl Plain {
    pub const fn with_arena(arena: usize) -> Self {
        Plain { _arena: arena }
    }
}

unsafe impl GlobalAlloc for Plain {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

rsprof_trace::profiler!(alloc = Plain::with_arena(4));

#[test]
fn dyn_allocator() {
    let s: String = (0..100).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    assert_eq!(s.len(), 100);
}
