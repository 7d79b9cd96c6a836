//! docs/ARCHITECTURE.md is the map of the tree: this test keeps it true file for file.
//! Every Rust source file of a crate's `src/` (and every `build.rs`) is named in the code
//! map by its path; every path the doc names exists; and the doc points at nothing outside
//! the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const DOC: &str = "docs/ARCHITECTURE.md";
/// Crates whose sources the map must list file for file.
const CRATES: &[&str] = &[
    "protocol",
    "launcher",
    "fake-backend",
    "fake-docker",
    "scenarios",
    "sandbox",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The backticked spans of the doc: `a/b.rs`, `launcher/src/run/`.
fn backticked(doc: &str) -> BTreeSet<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn doc() -> String {
    std::fs::read_to_string(root().join(DOC)).expect("reading docs/ARCHITECTURE.md")
}

#[test]
fn the_code_map_names_every_source_file() {
    let root = root();
    let names = backticked(&doc());
    let mut files = Vec::new();
    for krate in CRATES {
        rust_files(&root.join(krate).join("src"), &mut files);
        let build = root.join(krate).join("build.rs");
        if build.exists() {
            files.push(build);
        }
    }
    let missing: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap().to_string_lossy().into_owned())
        .filter(|rel| !names.contains(rel))
        .collect();
    assert!(
        missing.is_empty(),
        "{DOC} does not name these source files (write each as `crate/src/path.rs`): {missing:#?}"
    );
}

#[test]
fn every_path_the_doc_names_exists() {
    let root = root();
    let stale: Vec<String> = backticked(&doc())
        .into_iter()
        .filter(|s| {
            !s.contains(' ')
                && s.contains('/')
                && (s.ends_with(".rs") || s.ends_with('/') || s.ends_with(".md"))
        })
        .filter(|s| !root.join(s).exists())
        .collect();
    assert!(stale.is_empty(), "{DOC} names paths that do not exist: {stale:#?}");
}

#[test]
fn the_doc_points_at_nothing_outside_the_repository() {
    let doc = doc();
    let outside: Vec<&str> = doc
        .lines()
        .filter(|l| l.contains("../") || l.contains("/work/") || l.contains("/tmp/"))
        .collect();
    assert!(
        outside.is_empty(),
        "{DOC} points outside the repository: {outside:#?}"
    );
}
