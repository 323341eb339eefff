//! rsprof-example: a synthetic request-handling service for the rsprof demo.
//!
//! `rsprof-example [--threads N] [--seconds S]` runs N workers (default 4)
//! for S seconds (default: until killed). Each request parses a small
//! key=value document, checksums it, sorts records and renders a response,
//! so the CPU profile has a few clearly different hot spots.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Request {
    id: u64,
    body: String,
}

#[inline(never)]
fn make_request(id: u64) -> Request {
    let mut body = String::with_capacity(2048);
    for i in 0..64 {
        body.push_str(&format!("key{}=value{};", (id + i) % 97, (id * 31 + i) % 1013));
    }
    Request { id, body }
}

#[inline(never)]
fn parse_document(body: &str) -> HashMap<String, u64> {
    let mut fields = HashMap::new();
    for pair in body.split(';') {
        if let Some((k, v)) = pair.split_once('=') {
            let n: u64 = v.trim_start_matches("value").parse().unwrap_or(0);
            *fields.entry(k.to_string()).or_insert(0) += n;
        }
    }
    fields
}

#[inline(never)]
fn compute_checksum(data: &[u8]) -> u64 {
    // A deliberately slow byte-at-a-time hash: the demo's main hot spot.
    let mut h = 0xcbf29ce484222325u64;
    for _ in 0..40 {
        for &b in data {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

#[inline(never)]
fn sort_records(fields: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fields.iter().map(|(k, v)| (k.clone(), *v)).collect();
    for _ in 0..8 {
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.reverse();
    }
    v
}

#[inline(never)]
fn render_response(id: u64, records: &[(String, u64)], checksum: u64) -> String {
    let mut out = format!("{{\"id\":{id},\"checksum\":\"{checksum:016x}\",\"records\":[");
    for (i, (k, v)) in records.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{{\"k\":\"{k}\",\"v\":{v}}}"));
    }
    out.push_str("]}");
    out
}

#[inline(never)]
fn handle_request(req: &Request) -> usize {
    let fields = parse_document(&req.body);
    let checksum = compute_checksum(req.body.as_bytes());
    let records = sort_records(&fields);
    render_response(req.id, &records, checksum).len()
}

fn worker(id: u64, stop: Arc<AtomicBool>, served: Arc<AtomicU64>) {
    let mut n = id * 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        let req = make_request(n);
        black_box(handle_request(&req));
        served.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
}

fn arg(name: &str) -> Option<f64> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let threads = arg("--threads").unwrap_or(4.0) as u64;
    let seconds = arg("--seconds");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    println!("rsprof-example: pid {} with {threads} workers", std::process::id());
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker(i, stop, served))
                .expect("spawn worker")
        })
        .collect();
    let start = Instant::now();
    while seconds.is_none_or(|s| start.elapsed().as_secs_f64() < s) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("join worker");
    }
    println!("rsprof-example: served {} requests", served.load(Ordering::Relaxed));
}
