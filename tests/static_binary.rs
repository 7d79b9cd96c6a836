//! The one statically linked launcher binary (`scripts/build-static.sh`, docs/performance.md
//! "One static binary"): it runs here, needs no program interpreter, and its stripped size
//! is printed. Skips when it has not been built, fails so under `CI=true` (`.ci/run` builds it).

use std::path::PathBuf;
use std::process::Command;

/// Where `scripts/build-static.sh` leaves it.
fn static_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("static/x86_64-unknown-linux-gnu/dist/spacelift-launcher")
}

/// The `p_type` of each program header of a little-endian ELF64 file.
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert!(elf.len() > 64 && &elf[..4] == b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (entsize, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let o = phoff + i * entsize;
            u32::from_le_bytes(elf[o..o + 4].try_into().expect("4 bytes"))
        })
        .collect()
}

const PT_INTERP: u32 = 3;

#[test]
fn the_static_binary_runs_here_and_needs_no_interpreter() {
    let bin = static_binary();
    if !protocol::test_support::require_component(
        bin.is_file(),
        "the static launcher binary",
        "run scripts/build-static.sh",
    ) {
        return;
    }
    let elf = std::fs::read(&bin).expect("reading the static binary");
    let types = program_header_types(&elf);
    assert!(
        !types.contains(&PT_INTERP),
        "{} has a PT_INTERP header: it is dynamically linked",
        bin.display()
    );
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .expect("running the static binary");
    assert!(out.status.success(), "--version failed: {out:?}");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "unexpected --version output {version:?}"
    );
    println!(
        "{}: {} bytes (stripped), {}",
        bin.display(),
        elf.len(),
        version.trim()
    );
}

#[test]
fn a_dynamically_linked_binary_is_told_apart() {
    // This test's own executable is dynamically linked (the default): the check sees it.
    let me = std::fs::read(std::env::current_exe().expect("own path")).expect("own bytes");
    assert!(program_header_types(&me).contains(&PT_INTERP));
}
