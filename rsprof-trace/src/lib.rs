//! rsprof-trace: opt-in in-process recording for [rsprof](../README.md).
//!
//! Add one line to your binary crate:
//!
//! ```ignore
//! rsprof_trace::profiler!();                         // System allocator, cpu 99 Hz
//! rsprof_trace::profiler!(cpu = 199);                // self-sampling frequency
//! rsprof_trace::profiler!(alloc = mimalloc::MiMalloc);          // wrap your allocator
//! rsprof_trace::profiler!(alloc = MyAlloc::new(), cpu = 199);   // a const expression
//! rsprof_trace::profiler!(alloc: MyAlloc = MyAlloc::new());     // ... with its type
//! ```
//!
//! and depend on this crate with a feature of your own that enables
//! `rsprof-trace/profiling` (or `heap` / `cpu` alone). Build with
//! `RUSTFLAGS="-C force-frame-pointers=yes"` (rsprof walks frame pointers; the
//! wrapper's own frame must have one, or the stack loses its first caller).
//!
//! # Features
//!
//! - none (the default): `profiler!()` and `profiler!(cpu = N)` expand to
//!   nothing at all: no static, no symbol, no C code linked.
//!   `profiler!(alloc = X)` installs `X` as the plain `#[global_allocator]`
//!   (exactly what you would have written without rsprof), so switching the
//!   feature off never changes which allocator the program uses.
//! - `heap`: `profiler!` installs a `#[global_allocator]` wrapping
//!   [`std::alloc::System`] (or `X`) that reports every alloc, alloc_zeroed,
//!   realloc and dealloc to rsprof's C recorder (`csrc/rsprof_shim.c`, linked
//!   statically by this crate's build script). At start-up the recorder
//!   publishes an IDLE region `/dev/shm/rsprof-<pid>-<hex>` (mode 0600);
//!   nothing is recorded (one relaxed load per call) until `rsprof -p PID`
//!   attaches.
//! - `cpu`: `profiler!(cpu = N)` exports `RSPROF_TRACE_CPU_HZ: u32 = N`
//!   (default 99), an unmangled static the C side reads: the frequency of the
//!   in-process SIGPROF self-sampler (`csrc/rsprof_sampler.c`). Its handler is
//!   installed at start-up when SIGPROF is at its default (a program's own
//!   handler is left alone, and then no self-samples are taken); timers run
//!   only while `rsprof -p PID --cpu-source self` (or auto without perf) records.
//! - `profiling` = `heap` + `cpu`.
//!
//! # Allocator forms
//!
//! `alloc = a::b::C` (a path naming a unit struct) wraps that type directly
//! (static dispatch), as does `alloc: Type = <const expression>`. Any other
//! expression (`alloc = MyAlloc::new(4)`, usable in a static initializer,
//! `Sync`, and without interior mutability at its top level, since it is
//! borrowed for 'static: rustc error E0492 otherwise, then use the typed form)
//! is held as a `&'static (dyn GlobalAlloc + Sync)`: one indirect call per
//! operation. A type implementing `GlobalAlloc` is required in every form.

#![deny(unsafe_op_in_unsafe_fn)]

use std::alloc::{GlobalAlloc, Layout};

#[doc(hidden)]
pub use std::alloc::System;

/// The C API of the recorder (csrc/rsprof_shim.h); linked only with `heap` or `cpu`.
#[cfg(any(feature = "heap", feature = "cpu"))]
pub mod ffi {
    use std::ffi::{c_int, c_void};

    /// `struct rsprof_shim_realloc` (opaque to callers).
    #[repr(C)]
    #[derive(Default)]
    pub struct ShimRealloc {
        pos: u64,
        old: u64,
        armed: u32,
        unused: u32,
    }

    /// Flag of [`rsprof_shim_write_record`]: drop instead of waiting for space.
    pub const RSPROF_SHIM_NOWAIT: c_int = 1;

    unsafe extern "C" {
        pub fn rsprof_shim_init() -> c_int;
        pub fn rsprof_shim_recording() -> c_int;
        pub fn rsprof_shim_record_alloc(ptr: *mut c_void, size: usize);
        pub fn rsprof_shim_record_free(ptr: *mut c_void);
        pub fn rsprof_shim_realloc_begin(r: *mut ShimRealloc, old: *mut c_void);
        pub fn rsprof_shim_realloc_end(
            r: *mut ShimRealloc,
            new_ptr: *mut c_void,
            size: usize,
            old_released: c_int,
        );
        pub fn rsprof_shim_write_record(record: *const c_void, size: usize, flags: c_int) -> c_int;
    }
}

/// Whether a reader (`rsprof -p PID`) is recording this process now.
/// Always false without the `heap` and `cpu` features.
pub fn recording() -> bool {
    #[cfg(any(feature = "heap", feature = "cpu"))]
    {
        // SAFETY: a relaxed load inside the recorder; callable any time.
        unsafe { ffi::rsprof_shim_recording() != 0 }
    }
    #[cfg(not(any(feature = "heap", feature = "cpu")))]
    {
        false
    }
}

/// Make sure the recorder has mapped its region (it does so by itself in a
/// constructor at start-up); returns whether a region is mapped.
/// Always false without the `heap` and `cpu` features.
pub fn init() -> bool {
    #[cfg(any(feature = "heap", feature = "cpu"))]
    {
        // SAFETY: idempotent and thread-safe.
        unsafe { ffi::rsprof_shim_init() != 0 }
    }
    #[cfg(not(any(feature = "heap", feature = "cpu")))]
    {
        false
    }
}

/// An allocator held by reference (the `alloc = <expression>` form).
pub struct DynAlloc(pub &'static (dyn GlobalAlloc + Sync));

unsafe impl GlobalAlloc for DynAlloc {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.alloc(layout) }
    }
    #[inline(always)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.alloc_zeroed(layout) }
    }
    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    #[inline(always)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// The recording wrapper `profiler!()` installs with the `heap` feature.
///
/// Every method is the allocator entry point the recorder expects
/// (csrc/rsprof_shim.h): it calls the C API directly, so the recorded stack
/// starts at the caller of this method. They are `#[inline(never)]` and
/// generic, hence compiled in the user's crate with its
/// `-C force-frame-pointers=yes`. Alignment is not recorded (the shim keys
/// blocks by pointer and size only).
#[cfg(feature = "heap")]
pub struct Traced<A>(pub A);

#[cfg(feature = "heap")]
unsafe impl<A: GlobalAlloc> GlobalAlloc for Traced<A> {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees; the shim only records.
        unsafe {
            let p = self.0.alloc(layout);
            ffi::rsprof_shim_record_alloc(p.cast(), layout.size());
            p
        }
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        unsafe {
            let p = self.0.alloc_zeroed(layout);
            ffi::rsprof_shim_record_alloc(p.cast(), layout.size());
            p
        }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the free is recorded before the block can be reused.
        unsafe {
            ffi::rsprof_shim_record_free(ptr.cast());
            self.0.dealloc(ptr, layout)
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the FREE slot is reserved before the real call and always
        // committed after it (GlobalAlloc::realloc leaves the old block alone
        // exactly when it returns null; new_size is never 0).
        unsafe {
            let mut r = ffi::ShimRealloc::default();
            ffi::rsprof_shim_realloc_begin(&mut r, ptr.cast());
            let new = self.0.realloc(ptr, layout, new_size);
            ffi::rsprof_shim_realloc_end(&mut r, new.cast(), new_size, (!new.is_null()) as i32);
            new
        }
    }
}

/// Called from the `.init_array` entry `profiler!` adds with the `cpu`
/// feature: it references the recorder so that the linker keeps it (and its
/// constructor) even without the heap wrapper.
#[cfg(feature = "cpu")]
#[doc(hidden)]
pub extern "C" fn __rsprof_trace_start() {
    // SAFETY: idempotent; the constructor of the recorder already ran or runs.
    unsafe {
        ffi::rsprof_shim_init();
    }
}

/// Install rsprof's recorder in this binary; see the crate documentation.
/// Use it once, at item level, in the binary crate.
#[macro_export]
macro_rules! profiler {
    () => {
        $crate::__rsprof_heap!();
        $crate::__rsprof_cpu!(99);
    };
    (cpu = $hz:expr $(,)?) => {
        $crate::__rsprof_heap!();
        $crate::__rsprof_cpu!($hz);
    };
    (alloc : $t:ty = $a:expr , cpu = $hz:expr $(,)?) => {
        $crate::__rsprof_heap!(typed $t = $a);
        $crate::__rsprof_cpu!($hz);
    };
    (alloc : $t:ty = $a:expr $(,)?) => {
        $crate::__rsprof_heap!(typed $t = $a);
        $crate::__rsprof_cpu!(99);
    };
    (alloc = $($seg:ident)::+ , cpu = $hz:expr $(,)?) => {
        $crate::__rsprof_heap!(path $($seg)::+);
        $crate::__rsprof_cpu!($hz);
    };
    (alloc = $($seg:ident)::+ $(,)?) => {
        $crate::__rsprof_heap!(path $($seg)::+);
        $crate::__rsprof_cpu!(99);
    };
    (alloc = $a:expr , cpu = $hz:expr $(,)?) => {
        $crate::__rsprof_heap!(expr $a);
        $crate::__rsprof_cpu!($hz);
    };
    (alloc = $a:expr $(,)?) => {
        $crate::__rsprof_heap!(expr $a);
        $crate::__rsprof_cpu!(99);
    };
}

#[cfg(feature = "heap")]
#[doc(hidden)]
#[macro_export]
macro_rules! __rsprof_heap {
    () => {
        #[global_allocator]
        static __RSPROF_TRACE_ALLOC: $crate::Traced<$crate::System> = $crate::Traced($crate::System);
    };
    (path $($seg:ident)::+) => {
        #[global_allocator]
        static __RSPROF_TRACE_ALLOC: $crate::Traced<$($seg)::+> = $crate::Traced($($seg)::+);
    };
    (typed $t:ty = $a:expr) => {
        #[global_allocator]
        static __RSPROF_TRACE_ALLOC: $crate::Traced<$t> = $crate::Traced($a);
    };
    (expr $a:expr) => {
        #[global_allocator]
        static __RSPROF_TRACE_ALLOC: $crate::Traced<$crate::DynAlloc> =
            $crate::Traced($crate::DynAlloc(&$a));
    };
}

/// Without `heap`: nothing, or the user's allocator installed as is.
#[cfg(not(feature = "heap"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __rsprof_heap {
    () => {};
    (path $($seg:ident)::+) => {
        #[global_allocator]
        static __GLOBAL_ALLOCATOR: $($seg)::+ = $($seg)::+;
    };
    (typed $t:ty = $a:expr) => {
        #[global_allocator]
        static __GLOBAL_ALLOCATOR: $t = $a;
    };
    (expr $a:expr) => {
        #[global_allocator]
        static __GLOBAL_ALLOCATOR: $crate::DynAlloc = $crate::DynAlloc(&$a);
    };
}

#[cfg(feature = "cpu")]
#[doc(hidden)]
#[macro_export]
macro_rules! __rsprof_cpu {
    ($hz:expr) => {
        /// Self-sampling frequency read by the recorder (csrc/rsprof_sampler.c).
        #[unsafe(no_mangle)]
        #[used]
        pub static RSPROF_TRACE_CPU_HZ: u32 = $hz;
        #[used]
        #[unsafe(link_section = ".init_array")]
        static __RSPROF_TRACE_INIT: extern "C" fn() = $crate::__rsprof_trace_start;
    };
}

#[cfg(not(feature = "cpu"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __rsprof_cpu {
    ($hz:expr) => {
        const _: u32 = $hz; // type-checked, then gone
    };
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts what reaches the wrapped allocator.
    pub struct Counting;
    pub static CALLS: AtomicUsize = AtomicUsize::new(0);

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            CALLS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    // The path form with a frequency: the user's allocator must see every call.
    crate::profiler!(alloc = Counting, cpu = 5 * 40);

    #[test]
    fn user_allocator_is_used() {
        let before = CALLS.load(Ordering::Relaxed);
        let v: Vec<u64> = std::hint::black_box(Vec::with_capacity(100));
        drop(v);
        assert!(CALLS.load(Ordering::Relaxed) > before);
    }

    #[test]
    fn realloc_keeps_contents() {
        let mut v: Vec<u32> = Vec::new();
        for i in 0..10_000u32 {
            v.push(i);
        }
        v.shrink_to_fit();
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn cpu_frequency_is_exported() {
        assert_eq!(RSPROF_TRACE_CPU_HZ, 200);
    }

    #[test]
    fn not_recording_without_reader() {
        assert!(!crate::recording());
    }
}
