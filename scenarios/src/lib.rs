//! Scenario engine: drives the launcher against the fakes from YAML files.
