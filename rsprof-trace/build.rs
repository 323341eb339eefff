//! Compiles rsprof's C recorder (../csrc/rsprof_shim.c, and the SIGPROF
//! sampler ../csrc/rsprof_sampler.c for `cpu`) into a static archive
//! when the `heap` or `cpu` feature is on. Nothing is built otherwise.
//! csrc/rsprof_preload.c (the LD_PRELOAD malloc interposer) is never built
//! here: inside a Rust binary the global allocator wrapper is the hook.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("rsprof-trace: cannot run {cmd:?}: {e}"));
    if !status.success() {
        panic!("rsprof-trace: {cmd:?} failed with {status}");
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let heap = env::var_os("CARGO_FEATURE_HEAP").is_some();
    let cpu = env::var_os("CARGO_FEATURE_CPU").is_some();
    if !heap && !cpu {
        return;
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let csrc = manifest.join("..").join("csrc");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for header in ["rsprof_shm.h", "rsprof_shim.h", "rsprof_shim_internal.h", "rsprof_sys.h"] {
        println!("cargo:rerun-if-changed={}", csrc.join(header).display());
    }
    let mut sources = vec![csrc.join("rsprof_shim.c")];
    let sampler = csrc.join("rsprof_sampler.c");
    println!("cargo:rerun-if-changed={}", sampler.display());
    if cpu {
        sources.push(sampler);
    }
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let mut cc_words = cc.split_whitespace();
    let cc_prog = cc_words.next().unwrap_or("cc").to_string();
    let cc_args: Vec<String> = cc_words.map(str::to_string).collect();
    let mut objects = Vec::new();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let obj = out.join(format!("{stem}.o"));
        let mut cmd = Command::new(&cc_prog);
        cmd.args(&cc_args)
            .args([
                "-c",
                "-O2",
                "-g",
                "-fPIC",
                "-fno-omit-frame-pointer",
                "-fno-optimize-sibling-calls",
                "-pthread",
                "-Wall",
                "-Wextra",
                "-Werror",
            ])
            .arg(format!("-I{}", csrc.display()))
            .args(cpu.then_some("-DRSPROF_WITH_SAMPLER"))
            .arg("-o")
            .arg(&obj)
            .arg(src);
        run(&mut cmd);
        objects.push(obj);
    }
    let lib = out.join("librsprof_shim_static.a");
    let _ = std::fs::remove_file(&lib);
    let ar = env::var("AR").unwrap_or_else(|_| "ar".to_string());
    run(Command::new(ar).arg("crs").arg(&lib).args(&objects));
    println!("cargo:rustc-link-search=native={}", Path::new(&out).display());
    println!("cargo:rustc-link-lib=static=rsprof_shim_static");
}
