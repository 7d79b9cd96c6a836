//! Helpers on tokio's clock (the only clock the core reads), shared by the supervisor and
//! the runs.

use tokio::time::Instant;

/// Sleeps until `deadline`; with none, never wakes (a `select!` arm that stays idle).
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
