//! The topic ACL: a client (id = worker ULID, pool = from its certificate) may subscribe
//! only to its own readonly topic and publish (and set its Last Will) only on its own
//! writeonly topic. No wildcards.

use protocol::topics;

pub fn may_subscribe(ns: &str, pool: &str, client_id: &str, filter: &str) -> bool {
    filter == topics::readonly(ns, pool, client_id)
}

pub fn may_publish(ns: &str, pool: &str, client_id: &str, topic: &str) -> bool {
    topic == topics::writeonly(ns, pool, client_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_own_topics() {
        assert!(may_subscribe(
            "spacelift",
            "P",
            "W",
            "spacelift/readonly/P/W"
        ));
        assert!(!may_subscribe(
            "spacelift",
            "P",
            "W",
            "spacelift/readonly/P/X"
        ));
        assert!(!may_subscribe(
            "spacelift",
            "P",
            "W",
            "spacelift/readonly/P/+"
        ));
        assert!(!may_subscribe("spacelift", "P", "W", "spacelift/#"));
        assert!(!may_subscribe(
            "spacelift",
            "P",
            "W",
            "spacelift/writeonly/P/W"
        ));
        assert!(may_publish(
            "spacelift",
            "P",
            "W",
            "spacelift/writeonly/P/W"
        ));
        assert!(!may_publish(
            "spacelift",
            "P",
            "W",
            "spacelift/readonly/P/W"
        ));
        assert!(!may_publish(
            "spacelift",
            "Q",
            "W",
            "spacelift/writeonly/P/W"
        ));
    }
}
