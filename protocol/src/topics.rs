//! MQTT topics, as Spacelift documents them: `<ns>/readonly/<pool>/<worker>` carries
//! server -> worker messages, `<ns>/writeonly/<pool>/<worker>` worker -> server.

/// The default topic namespace.
pub const DEFAULT_NAMESPACE: &str = "spacelift";

/// Topic a worker subscribes to (server -> worker).
pub fn readonly(namespace: &str, pool: &str, worker: &str) -> String {
    format!("{namespace}/readonly/{pool}/{worker}")
}

/// Topic a worker publishes to (worker -> server).
pub fn writeonly(namespace: &str, pool: &str, worker: &str) -> String {
    format!("{namespace}/writeonly/{pool}/{worker}")
}

/// Filter the backend subscribes to for every worker's messages.
pub fn all_writeonly(namespace: &str) -> String {
    format!("{namespace}/writeonly/#")
}

/// Which worker a topic belongs to, as `(direction, pool, worker)`.
pub fn parse(namespace: &str, topic: &str) -> Option<(Direction, String, String)> {
    let rest = topic.strip_prefix(namespace)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let direction = match parts.next()? {
        "readonly" => Direction::ToWorker,
        "writeonly" => Direction::FromWorker,
        _ => return None,
    };
    let pool = parts.next().filter(|s| !s.is_empty())?;
    let worker = parts.next().filter(|s| !s.is_empty())?;
    if parts.next().is_some() {
        return None;
    }
    Some((direction, pool.to_string(), worker.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToWorker,
    FromWorker,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = writeonly("spacelift", "P", "W");
        assert_eq!(t, "spacelift/writeonly/P/W");
        assert_eq!(
            parse("spacelift", &t),
            Some((Direction::FromWorker, "P".into(), "W".into()))
        );
        assert_eq!(parse("spacelift", "spacelift/readonly/P"), None);
        assert_eq!(parse("spacelift", "spacelift/readonly/P/W/x"), None);
        assert_eq!(parse("spacelift", "other/readonly/P/W"), None);
    }
}
