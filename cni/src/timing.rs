//! The binary's step timing for benchmarks: with `SWITCHYARD_CNI_TIMING`
//! set (to anything), one line on stderr at exit,
//! `switchyard-timing main=<us> input=<us> ...`, each step's wall-clock
//! time in microseconds since the Unix epoch (comparable with the caller's
//! clock and the agent's log). Steps: `main` (entered), `input` (stdin,
//! environment and configuration read and checked), `runtime` (I/O runtime
//! built), `connected`, `sent`, `replied` (the agent's socket), `printed`
//! (stdout written). Without the variable nothing is recorded; stdout is
//! the CNI result either way.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable that turns the timing line on.
pub const ENV: &str = "SWITCHYARD_CNI_TIMING";

static MARKS: Mutex<Option<Vec<(&'static str, SystemTime)>>> = Mutex::new(None);

fn marks() -> std::sync::MutexGuard<'static, Option<Vec<(&'static str, SystemTime)>>> {
    MARKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts recording (step `main`) if [`ENV`] is set.
pub fn start() {
    if std::env::var_os(ENV).is_some() {
        *marks() = Some(vec![("main", SystemTime::now())]);
    }
}

/// Records that `step` is done (nothing unless [`start`] turned it on).
pub fn mark(step: &'static str) {
    if let Some(m) = marks().as_mut() {
        m.push((step, SystemTime::now()));
    }
}

/// Writes the line on stderr (nothing unless [`start`] turned it on).
pub fn report() {
    let Some(m) = marks().take() else { return };
    let fields: Vec<String> = m
        .iter()
        .map(|(step, at)| {
            let us = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
            format!("{step}={us}")
        })
        .collect();
    eprintln!("switchyard-timing {}", fields.join(" "));
}
