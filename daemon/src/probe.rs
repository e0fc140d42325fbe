//! Readiness conditions kept by periodic checks: each [`Check`] runs every
//! [`PERIOD`] with a [`TIMEOUT`]; an error or no answer in time makes its
//! condition false at once, so `/readyz` follows a stopped dependency within
//! about `PERIOD + TIMEOUT` (1.5 s). The loop also beats the `probes`
//! heartbeat: a stuck runtime fails `/healthz`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::http::Health;

/// Time between two rounds of checks.
pub const PERIOD: Duration = Duration::from_millis(500);
/// How long a check may take before it counts as failed.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// `/healthz` fails when the probe loop has not run for this long.
pub const STALL: Duration = Duration::from_secs(30);

/// What a check returns: `Err` with the reason when the condition does not hold.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One readiness condition and the check that keeps it.
pub struct Check {
    /// The condition's name, as `/readyz` lists it.
    pub name: &'static str,
    /// The check.
    pub run: Box<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check").field("name", &self.name).finish()
    }
}

impl Check {
    /// A check named `name` running `run`.
    pub fn new<F, Fut>(name: &'static str, run: F) -> Check
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Check {
            name,
            run: Box::new(move || Box::pin(run())),
        }
    }
}

/// Runs `checks` forever (abort the task to stop), declaring each as a
/// readiness condition of `health` (false until its first success).
pub async fn run(health: Health, checks: Vec<Check>) {
    for check in &checks {
        health.declare(check.name);
    }
    let beat = health.heartbeat("probes", STALL);
    let mut ticker = tokio::time::interval(PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        beat.beat();
        let rounds = checks.iter().map(|check| async {
            let outcome = match tokio::time::timeout(TIMEOUT, (check.run)()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
            };
            (check.name, outcome)
        });
        for (name, outcome) in futures::future::join_all(rounds).await {
            health.set(name, outcome);
        }
    }
}
