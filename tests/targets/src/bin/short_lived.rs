//! Allocates and leaks 8 blocks of 4096 bytes at one line, then exits at once
//! (within a few milliseconds of starting): a program gone before a recorder
//! that reads its memory map late could see which libraries it had.

#[inline(never)]
fn leak_and_leave() -> usize {
    let mut kept = 0;
    for i in 0..8u8 {
        let block = vec![i; 4096]; // the leak site
        kept += std::hint::black_box(block.leak()).len();
    }
    kept
}

fn main() {
    std::process::exit(if leak_and_leave() == 8 * 4096 { 0 } else { 1 });
}
