//! Backend adapters: HTTPS (synchronous calls) and MQTT (push channel).
pub mod https;
pub mod mqtt;
