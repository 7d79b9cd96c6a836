//! Fake Spacelift backend: PKI, MQTT broker, HTTPS API, admin API and CLI.
