//! Scenario engine: drives the launcher against the fake backend and fake Docker daemon from
//! declarative YAML files (`scenarios/cases/*.yaml`).
//!
//! - [`model`]: the file format.
//! - [`parse`]: reading and checking files (line-numbered errors).

pub mod error;
pub mod model;
pub mod parse;

pub use error::ScenarioError;
pub use model::Scenario;
