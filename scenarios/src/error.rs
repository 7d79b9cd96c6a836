use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The file is not valid YAML or does not match the format.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file parses, but refers to something that does not exist or is inconsistent.
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Setting up or driving the simulated world failed (not a verdict: a harness error).
    #[error("harness: {0}")]
    Harness(String),
}
