//! Generates one `#[test]` per scenario file in `cases/` and mode (`_sim`, `_wire`), so
//! `cargo test` names each.

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
        let pending_line = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# pending:"))
            .map(str::to_string);
        let pending = pending_line.is_some();
        let why_pending = pending_line.unwrap_or_default();
        // One test per mode: `SCENARIO_MODE=sim|wire` (as scripts/test.sh sets it) runs
        // one mode's tests only; unset, both.
        for (mode, variant) in [("sim", "Sim"), ("wire", "Wire")] {
            if pending {
                writeln!(out, "#[ignore = {:?}]", format!("pending:{}", why_pending)).unwrap();
            }
            writeln!(
                out,
                "#[test]\nfn {ident}_{mode}() {{ if mode_selected({mode:?}) {{ run_case({:?}, scenarios::Mode::{variant}); }} }}\n",
                path.display().to_string()
            )
            .unwrap();
        }
    }
    out.push_str(
        "/// Whether this run of the suite includes `mode` (`SCENARIO_MODE`, both when unset).\n\
         fn mode_selected(mode: &str) -> bool {\n\
         \x20   std::env::var(\"SCENARIO_MODE\").map_or(true, |m| m.is_empty() || m == mode)\n\
         }\n",
    );
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("cases.rs");
    std::fs::write(dest, out).unwrap();
}
