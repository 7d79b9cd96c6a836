//! The summary of the demo runs: one row per run, rendered as a table (and as JSON by the
//! caller), apart from the code that drives the runs.

use protocol::RunState;
use serde::Serialize;

/// A row of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub name: String,
    pub run_ulid: String,
    pub state: RunState,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub worker_version: Option<String>,
    pub expected: String,
    pub as_expected: bool,
    pub log_lines: Vec<String>,
}

pub fn render_table(rows: &[RunSummary]) -> String {
    let header = [
        "run", "ulid", "state", "exit", "reason", "worker", "expected", "ok",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.run_ulid.clone(),
                r.state.to_string(),
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.reason.clone().unwrap_or_else(|| "-".into()),
                r.worker_version.clone().unwrap_or_else(|| "-".into()),
                r.expected.clone(),
                if r.as_expected { "yes" } else { "NO" }.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        row.iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = String::from("\nSummary\n");
    out.push_str(&line(&header.map(String::from)));
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out.push_str("\nRun logs as the backend received them:\n");
    for r in rows {
        out.push_str(&format!("  {}:\n", r.name));
        for l in &r.log_lines {
            out.push_str(&format!("    | {l}\n"));
        }
    }
    out.push('\n');
    out
}
