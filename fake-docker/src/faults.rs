//! Faults on demand: failing or slowing API routes and pulls.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Fail the next `count` calls of a route (see `routes::Route::key`, or `*` for all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFault {
    pub route: String,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default = "internal")]
    pub status: u16,
    #[serde(default = "fault_message")]
    pub message: String,
}

fn one() -> u32 {
    1
}
fn internal() -> u16 {
    500
}
fn fault_message() -> String {
    "fake-docker: injected fault".into()
}

/// Makes pulls of an image (or of every image, with `image: None`) slow or failing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullFault {
    pub image: Option<String>,
    /// Delay before each progress line.
    pub step_delay_ms: u64,
    /// After the progress lines, end the stream with this in-stream error.
    pub error: Option<String>,
    /// How many pulls it applies to (`None` = until cleared).
    pub count: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Faults {
    pub routes: Vec<RouteFault>,
    pub latency: BTreeMap<String, Duration>,
    pub pulls: Vec<PullFault>,
}

impl Faults {
    /// Consumes one failure for `route`, if any is armed.
    pub fn take_route_fault(&mut self, route: &str) -> Option<RouteFault> {
        let idx = self
            .routes
            .iter()
            .position(|f| (f.route == route || f.route == "*") && f.count > 0)?;
        let f = &mut self.routes[idx];
        f.count -= 1;
        let out = f.clone();
        if f.count == 0 {
            self.routes.remove(idx);
        }
        Some(out)
    }

    pub fn latency_for(&self, route: &str) -> Duration {
        self.latency
            .get(route)
            .or_else(|| self.latency.get("*"))
            .copied()
            .unwrap_or_default()
    }

    /// Consumes one use of the first pull fault matching `image` (normalised `repo:tag`).
    pub fn take_pull_fault(&mut self, image: &str) -> Option<PullFault> {
        let norm = |x: &str| {
            crate::registry::Reference::parse(x)
                .map(|r| r.to_string())
                .unwrap_or_else(|_| x.to_string())
        };
        let idx = self.pulls.iter().position(|f| match &f.image {
            None => true,
            Some(i) => {
                norm(i) == image
                    || crate::registry::Reference::parse(i).is_ok_and(|r| {
                        !i.contains(':') && image.starts_with(&format!("{}:", r.repo))
                    })
            }
        })?;
        let f = &mut self.pulls[idx];
        let out = f.clone();
        if let Some(c) = f.count.as_mut() {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.pulls.remove(idx);
            }
        }
        Some(out)
    }

    pub fn clear(&mut self) {
        *self = Faults::default();
    }
}
