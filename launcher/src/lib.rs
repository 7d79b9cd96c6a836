//! Spacelift-compatible Docker worker-pool launcher.
