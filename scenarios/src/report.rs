//! What a scenario execution produced: a verdict, failures, and a trace.

use std::fmt;

use crate::model::Mode;

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
    pub mode: Mode,
    pub passed: bool,
    pub failures: Vec<String>,
    pub trace: Trace,
    /// Everything the fakes recorded, in order, on their clocks (the backend's events,
    /// every daemon's events): byte-identical across repeats of a sim execution.
    pub full: Vec<String>,
}

impl Report {
    /// SHA-256 of [`Report::full`] (hex), to compare repeats.
    pub fn full_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for line in &self.full {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The full trace of a world (see [`Report::full`]). Pool certificates are the one thing
/// not drawn from the seed (keys come from the OS's RNG): their fingerprints are named by
/// order of appearance.
pub fn full_trace(world: &crate::world::World) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(b) = &world.backend {
        let events = b.events();
        // Each distinct fingerprint, named by the index of the first event naming it
        // (every connection names one: looking for each repeat in every line was
        // quadratic in the run's length).
        let mut fingerprints: Vec<(usize, &str)> = Vec::new();
        for (i, f) in events
            .iter()
            .filter_map(|e| e.str("fingerprint"))
            .enumerate()
        {
            if !fingerprints.iter().any(|(_, g)| *g == f) {
                fingerprints.push((i, f));
            }
        }
        let fingerprints: Vec<(String, String)> = fingerprints
            .into_iter()
            .map(|(i, f)| (f.to_string(), format!("cert#{i}")))
            .collect();
        let stable = |line: String| {
            fingerprints
                .iter()
                .fold(line, |l, (f, name)| l.replace(f.as_str(), name))
        };
        for e in events {
            out.push(stable(format!(
                "backend {} {} {} pool={} worker={} run={} {}",
                e.seq,
                e.at_ms,
                e.kind,
                e.pool.as_deref().unwrap_or("-"),
                e.worker.as_deref().unwrap_or("-"),
                e.run.as_deref().unwrap_or("-"),
                e.data
            )));
        }
    }
    for (name, d) in &world.dockers {
        if let Some(f) = &d.fake {
            for e in f.admin().events() {
                out.push(format!(
                    "docker {name} {} {} {} {} {} {:?}",
                    e.seq, e.time, e.kind, e.action, e.id, e.attributes
                ));
            }
        }
    }
    out
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
            "  verdict: {} (seed {}, {} mode)",
            if self.passed { "PASS" } else { "FAIL" },
            self.seed,
            self.mode.as_str()
        )
    }
}
