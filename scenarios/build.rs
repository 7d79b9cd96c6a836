//! Generates one `#[test]` per scenario file in `cases/`, so `cargo test` names each.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = String::new();
    for path in names {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let ident: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        // A first line `# pending: why` keeps the case in the tree but ignored (run it
        // with `-- --ignored`) until what it needs is merged.
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(why) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# pending:"))
        {
            writeln!(out, "#[ignore = {:?}]", format!("pending:{why}")).unwrap();
        }
        writeln!(
            out,
            "#[test]\nfn {ident}() {{ run_case({:?}); }}\n",
            path.display().to_string()
        )
        .unwrap();
    }
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("cases.rs");
    std::fs::write(dest, out).unwrap();
}
