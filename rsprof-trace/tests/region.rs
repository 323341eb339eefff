//! With `heap`: the statically linked recorder publishes its region at
//! start-up (IDLE, mode 0600), and once a reader sets it RECORDING, the
//! global allocator wrapper writes ALLOC and FREE records for our blocks.
#![cfg(feature = "heap")]

use std::ffi::{c_int, c_void};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

rsprof_trace::profiler!();

unsafe extern "C" {
    fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: i64)
        -> *mut c_void;
}

// csrc/rsprof_shm.h
const MAGIC: u64 = 0x314d4853464f5250;
const HEADER_BYTES: usize = 4096;
const OFF_RING: usize = 16;
const OFF_PID: usize = 24;
const OFF_RESERVE: usize = 32;
const OFF_TAIL: usize = 80;
const OFF_HEARTBEAT: usize = 88;
const OFF_READER: usize = 96;
const OFF_STATE: usize = 100;
const OFF_SESSION: usize = 104;
const REC_ALLOC: u64 = 3;
const REC_FREE: u64 = 4;
const REC_ALLOC_BIG: u64 = 8;

fn rec_size(word: u64) -> u64 {
    match word >> 60 {
        REC_FREE => 8,
        REC_ALLOC => 16,
        _ => word & 0xffff_ffff,
    }
}

#[inline(never)]
fn make_block() -> Box<[u8]> {
    std::hint::black_box(vec![3u8; 12345].into_boxed_slice())
}

#[test]
fn region_published_and_records_written() {
    let pid = std::process::id();
    let prefix = format!("rsprof-{pid}-");
    let names: Vec<String> = fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert_eq!(names.len(), 1, "regions of pid {pid}: {names:?}");
    let path = format!("/dev/shm/{}", names[0]);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(rsprof_trace::init());
    assert!(!rsprof_trace::recording());

    let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let len = meta.len() as usize;
    let base = unsafe { mmap(std::ptr::null_mut(), len, 3, 1, file.as_raw_fd(), 0) };
    assert_ne!(base as isize, -1);
    let base = base as *mut u8;
    let u64_at = |off: usize| unsafe { &*(base.add(off) as *const AtomicU64) };
    let u32_at = |off: usize| unsafe { &*(base.add(off) as *const AtomicU32) };
    assert_eq!(u64_at(0).load(Ordering::Acquire), MAGIC);
    assert_eq!(u32_at(OFF_PID).load(Ordering::Relaxed), pid);
    assert_eq!(u32_at(OFF_STATE).load(Ordering::Relaxed), 0, "IDLE until a reader attaches");
    let ring = u64_at(OFF_RING).load(Ordering::Relaxed) as usize;

    // Attach like rsprof does: a session, a heartbeat, RECORDING.
    u32_at(OFF_SESSION).fetch_add(1, Ordering::AcqRel);
    u32_at(OFF_READER).store(pid, Ordering::Release);
    u64_at(OFF_HEARTBEAT).store(u64::MAX / 2, Ordering::Release);
    u32_at(OFF_STATE).store(1, Ordering::Release);
    assert!(rsprof_trace::recording());
    let block = make_block();
    let addr = block.as_ptr() as u64;
    drop(block);
    u32_at(OFF_STATE).store(0, Ordering::Release);

    let reserve = u64_at(OFF_RESERVE).load(Ordering::Acquire) as usize;
    assert_eq!(u64_at(OFF_TAIL).load(Ordering::Relaxed), 0);
    assert!(reserve > 0 && reserve < ring);
    let data = unsafe { base.add(HEADER_BYTES) };
    let (mut pos, mut alloc_at, mut free_at) = (0usize, None, None);
    while pos < reserve {
        let word = unsafe { &*(data.add(pos) as *const AtomicU64) }.load(Ordering::Acquire);
        assert_ne!(word, 0, "uncommitted record at {pos}");
        let size = rec_size(word) as usize;
        assert!(size >= 8 && size % 8 == 0);
        let second = unsafe { *(data.add(pos + 8) as *const u64) };
        match word >> 60 {
            REC_ALLOC if word & ((1 << 36) - 1) == 12345 && second == addr => alloc_at = Some(pos),
            REC_ALLOC_BIG if second == addr => alloc_at = Some(pos),
            REC_FREE if word & ((1 << 60) - 1) == addr => free_at = Some(pos),
            _ => {}
        }
        pos += size;
    }
    let (a, f) = (alloc_at.expect("ALLOC record"), free_at.expect("FREE record"));
    assert!(a < f, "ALLOC before FREE");
}
