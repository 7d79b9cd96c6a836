//! Fake Docker Engine API daemon: a deterministic, fault-injecting test instrument.
