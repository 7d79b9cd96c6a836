//! What a scenario execution produced: a verdict, failures, and a trace.

use std::fmt;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Readable progress notes (not compared across repeats).
    pub notes: Vec<String>,
    /// The canonical part, compared across repeats.
    pub canonical: Vec<String>,
    /// The execution on a time axis, for [`crate::timeline`] (not compared across repeats).
    pub timeline: crate::timeline::Timeline,
}

impl Trace {
    pub fn note(&mut self, line: String) {
        self.notes.push(line);
    }

    pub fn extend(&mut self, canonical: Vec<String>) {
        self.canonical.extend(canonical);
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub passed: bool,
    pub failures: Vec<String>,
    pub trace: Trace,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.trace.notes {
            writeln!(f, "  . {n}")?;
        }
        for c in &self.trace.canonical {
            writeln!(f, "  = {c}")?;
        }
        for x in &self.failures {
            writeln!(f, "  ! {x}")?;
        }
        write!(
            f,
            "  verdict: {} (seed {})",
            if self.passed { "PASS" } else { "FAIL" },
            self.seed
        )
    }
}
