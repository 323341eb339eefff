//! `profiler!()` compiles (with and without features) and the program runs.
rsprof_trace::profiler!();

#[test]
fn allocates() {
    let v: Vec<u8> = vec![7; 1000];
    assert_eq!(v.iter().map(|&x| x as usize).sum::<usize>(), 7000);
    assert!(!rsprof_trace::recording());
}
