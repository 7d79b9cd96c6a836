//! A scenario execution as a timeline a person reads at a glance: one self-contained HTML
//! file (inline SVG, no script, font or network) with one lane per launcher and per run.
//!
//! - [`record`]: the engine's hooks; builds a [`Timeline`] from the steps it ran and what
//!   the world recorded, on one time axis, with every secret the world knows redacted.
//! - [`html`]: draws a [`Report`]'s timeline; `describe`: how events and steps are worded.
//!
//! Times are milliseconds since the execution began on tokio's clock: virtual time when
//! time is paused (sim mode), elapsed time otherwise (wire mode). The timeline is not part
//! of the canonical trace, so repeats still compare only the canonical lines.

mod describe;
pub mod html;
pub mod record;

use std::collections::HashMap;
use std::path::Path;

use crate::error::ScenarioError;
use crate::report::Report;

pub use html::render_html;
pub use record::Recorder;

/// What a lane stands for, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LaneKind {
    /// The backend and broker, and faults aimed at no launcher, run or daemon.
    World,
    Docker,
    Launcher,
    Run,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub kind: LaneKind,
    /// The scenario's name for it (`r1`, `l1`, `d1`; `backend` for the world lane).
    pub name: String,
}

/// How a mark is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// A step the scenario took (schedule, cancel, drain, a wait...).
    Step,
    /// Something the backend or a daemon recorded.
    Event,
    /// An injected fault, a crash, a restart, or an error a component reported.
    Fault,
    /// A launcher exited.
    Exit,
    /// The step at which the scenario failed.
    Failure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub at_ms: u64,
    /// Index into [`Timeline::lanes`].
    pub lane: usize,
    pub kind: MarkKind,
    /// A few words drawn next to the mark.
    pub label: String,
    /// The hover title: the event's details.
    pub detail: String,
}

/// A stretch of time on a lane: a run in one state, a launcher up, a step waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub lane: usize,
    pub from_ms: u64,
    pub to_ms: u64,
    /// A run state (`running`, ...), `up` for a launcher, `wait` for a waiting step.
    pub state: String,
    pub detail: String,
    /// Drawn inside the bar where it fits: the launcher holding a run.
    pub label: String,
}

/// One execution, ready to draw. Every string in it has had the world's secrets redacted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    pub lanes: Vec<Lane>,
    /// In time order (stable: equal times keep the order they were recorded in).
    pub marks: Vec<Mark>,
    pub spans: Vec<Span>,
    /// The end of the axis.
    pub end_ms: u64,
    /// Set by [`Recorder::finish`]: the report's failures and trace lines, redacted too,
    /// which the page shows instead of the report's own.
    pub text: Option<ReportText>,
    /// `lanes` by (kind, name), so finding a lane does not scan them all (a scale run has
    /// thousands, and every event looks its lane up).
    lane_index: HashMap<(LaneKind, String), usize>,
}

/// A report's failures and trace lines with the world's secrets redacted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportText {
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    pub canonical: Vec<String>,
}

impl Timeline {
    /// The index of a lane, added (kept in [`LaneKind`] order) when new.
    pub fn lane(&mut self, kind: LaneKind, name: &str) -> usize {
        if self.lane_index.len() != self.lanes.len() {
            // `lanes` was set directly: index it again.
            self.lane_index.clear();
            for (i, l) in self.lanes.iter().enumerate() {
                self.lane_index.entry((l.kind, l.name.clone())).or_insert(i);
            }
        }
        if let Some(&i) = self.lane_index.get(&(kind, name.to_string())) {
            return i;
        }
        self.lanes.push(Lane {
            kind,
            name: name.to_string(),
        });
        let i = self.lanes.len() - 1;
        self.lane_index.insert((kind, name.to_string()), i);
        i
    }

    /// The lanes' indices in display order: by kind, then in order of first appearance.
    pub fn display_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.lanes.len()).collect();
        order.sort_by_key(|&i| (self.lanes[i].kind, i));
        order
    }
}

/// Writes `report`'s timeline to `path` as one HTML file titled after the file's stem.
pub fn write(report: &Report, path: &Path) -> Result<(), ScenarioError> {
    let title = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into());
    let io = |source| ScenarioError::Io {
        file: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, render_html(report, &title)).map_err(io)
}

/// Where `scenario run --timeline OUT` writes the timeline of `case`: OUT itself when one
/// file runs, else `OUT/<case stem>.html`.
pub fn output_path(out: &Path, case: &Path, cases: usize) -> std::path::PathBuf {
    if cases <= 1 {
        return out.to_path_buf();
    }
    let stem = case
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into());
    out.join(format!("{stem}.html"))
}

#[cfg(test)]
mod tests;
