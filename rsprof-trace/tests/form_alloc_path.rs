//! `profiler!(alloc = a::b::Type)`: a unit-struct path, static dispatch.
rsprof_trace::profiler!(alloc = std::alloc::System);

#[test]
fn path_allocator() {
    let mut v = Vec::new();
    for i in 0..1000u64 {
        v.push(i);
    }
    assert_eq!(v[999], 999);
}
