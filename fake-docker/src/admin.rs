//! The test-instrument API: rules, registry images, faults, kills, restarts, event log.
//! In-process ([`Admin`]); `admin_routes.rs` serves it over HTTP under `/_fake/`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::behaviour::Rule;
use crate::error::Error;
use crate::events::Event;
use crate::faults::{PullFault, RouteFault};
use crate::registry::{Platform, Reference, RemoteImage};
use crate::state::Daemon;

/// How a simulated daemon restart treats containers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartOptions {
    /// Keep containers (running ones keep running, like live-restore); else forget them all.
    pub keep_containers: bool,
    /// For this long after the restart, new connections are closed at once.
    pub downtime_ms: u64,
}

/// A container as the admin API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub status: String,
    pub exit_code: i64,
    pub oom_killed: bool,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// In-process admin access. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    pub(crate) daemon: Arc<Daemon>,
}

impl Admin {
    /// Appends a behaviour rule (first match wins, so earlier rules take precedence).
    pub fn add_rule(&self, rule: Rule) {
        self.daemon.lock().rules.push(rule);
    }

    /// Puts a rule before all others.
    pub fn prepend_rule(&self, rule: Rule) {
        self.daemon.lock().rules.insert(0, rule);
    }

    pub fn set_rules(&self, rules: Vec<Rule>) {
        self.daemon.lock().rules = rules;
    }

    pub fn rules(&self) -> Vec<Rule> {
        self.daemon.lock().rules.clone()
    }

    /// Tells the fake registry what `name` (`repo` = any tag, or `repo:tag`) offers.
    pub fn set_image(&self, name: &str, image: RemoteImage) -> Result<(), Error> {
        self.daemon
            .lock()
            .registry
            .set(name, image)
            .map_err(Error::Config)
    }

    /// Shorthand: the image exists for exactly these platforms (`"linux/arm64"`...).
    pub fn set_image_platforms(&self, name: &str, platforms: &[&str]) -> Result<(), Error> {
        let arch = self.daemon.config.arch.clone();
        let platforms = platforms
            .iter()
            .map(|p| {
                Platform::parse(p, &arch)
                    .map_err(Error::Config)?
                    .ok_or_else(|| Error::Config("empty platform".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.set_image(
            name,
            RemoteImage {
                platforms,
                ..RemoteImage::default()
            },
        )
    }

    /// Shorthand: pulls of `name` fail with "repository does not exist".
    pub fn set_image_missing(&self, name: &str) -> Result<(), Error> {
        self.set_image(
            name,
            RemoteImage {
                exists: false,
                ..RemoteImage::default()
            },
        )
    }

    /// Makes `name` present locally, as if pulled (platform per the registry, else host).
    pub fn load_image(&self, name: &str) -> Result<String, Error> {
        let r = Reference::parse(name).map_err(Error::Config)?;
        let d = &self.daemon;
        let mut st = d.lock();
        let platform = d
            .default_pull_platform(&st, &r, None)
            .map_err(Error::Config)?;
        let id = d.commit_image(&mut st, &r, platform);
        d.notify();
        Ok(id)
    }

    /// Fails the next `fault.count` calls of `fault.route` (a route key, or `*`).
    pub fn fail_next(&self, fault: RouteFault) -> Result<(), Error> {
        if fault.route != "*" && !crate::routes::ROUTE_KEYS.contains(&fault.route.as_str()) {
            return Err(Error::Config(format!(
                "unknown route {:?}; known: {}",
                fault.route,
                crate::routes::ROUTE_KEYS.join(", ")
            )));
        }
        self.daemon.lock().faults.routes.push(fault);
        Ok(())
    }

    /// Delays every call of `route` (or `*`) by `latency` (tokio time).
    pub fn set_latency(&self, route: &str, latency: Duration) {
        self.daemon
            .lock()
            .faults
            .latency
            .insert(route.to_string(), latency);
    }

    pub fn pull_fault(&self, fault: PullFault) {
        self.daemon.lock().faults.pulls.push(fault);
    }

    pub fn clear_faults(&self) {
        self.daemon.lock().faults.clear();
    }

    /// Sends a signal (number) to a running container, as `docker kill` would.
    pub fn kill_container(&self, id: &str, signal: i64) -> Result<(), Error> {
        let d = &self.daemon;
        let mut st = d.lock();
        let id = Daemon::resolve_container(&st, id)?;
        d.signal_locked(&mut st, &id, signal);
        Ok(())
    }

    /// Ends a running container as the OOM killer would (exit 137, OOMKilled).
    pub fn oom_kill(&self, id: &str) -> Result<(), Error> {
        let d = &self.daemon;
        let mut st = d.lock();
        let id = Daemon::resolve_container(&st, id)?;
        d.oom_kill_locked(&mut st, &id);
        Ok(())
    }

    /// Simulates a daemon restart: every connection (including attach and follow streams)
    /// is dropped; containers are kept or lost.
    pub fn restart(&self, opts: RestartOptions) {
        let d = &self.daemon;
        *d.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            tokio::time::Instant::now().checked_add(Duration::from_millis(opts.downtime_ms));
        d.epoch.send_modify(|e| *e = e.wrapping_add(1));
        if !opts.keep_containers {
            d.lose_containers();
        }
        let mut st = d.lock();
        let attrs = [(
            "keep_containers".to_string(),
            opts.keep_containers.to_string(),
        )]
        .into_iter()
        .collect();
        d.record(&mut st, "daemon", "restart", "", attrs);
    }

    /// The daemon's clock now: the time its next event would carry.
    pub fn now(&self) -> time::OffsetDateTime {
        self.daemon.clock.now()
    }

    /// The whole ordered event log.
    pub fn events(&self) -> Vec<Event> {
        self.daemon.lock().log.all().to_vec()
    }

    pub fn events_since(&self, seq: u64) -> Vec<Event> {
        self.daemon
            .lock()
            .log
            .since(usize::try_from(seq).unwrap_or(usize::MAX))
            .to_vec()
    }

    /// Waits (on state changes, not on time) for the first event matching `pred`.
    pub async fn wait_for_event(&self, pred: impl Fn(&Event) -> bool) -> Event {
        let mut changes = self.daemon.changes.subscribe();
        let mut seen = 0usize;
        loop {
            changes.borrow_and_update();
            {
                let st = self.daemon.lock();
                let evs = st.log.since(seen);
                if let Some(e) = evs.iter().find(|e| pred(e)) {
                    return e.clone();
                }
                seen += evs.len();
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn containers(&self) -> Vec<ContainerInfo> {
        let st = self.daemon.lock();
        let mut v: Vec<_> = st.containers.values().collect();
        v.sort_by_key(|c| c.seq);
        v.into_iter()
            .map(|c| ContainerInfo {
                id: c.id.clone(),
                name: c.name.clone(),
                image: c.image_ref.clone(),
                status: c.status.as_str().into(),
                exit_code: c.exit_code,
                oom_killed: c.oom_killed,
                labels: c.labels.clone(),
            })
            .collect()
    }
}
