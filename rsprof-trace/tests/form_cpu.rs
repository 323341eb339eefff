//! `profiler!(cpu = N)`: the frequency is exported with the `cpu` feature.
rsprof_trace::profiler!(cpu = 199);

#[test]
fn frequency() {
    #[cfg(feature = "cpu")]
    assert_eq!(RSPROF_TRACE_CPU_HZ, 199);
    let s = String::from("x").repeat(100);
    assert_eq!(s.len(), 100);
}
