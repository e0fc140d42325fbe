//! Probe hysteresis: down after `failure_threshold` consecutive failures, up after
//! `success_threshold` consecutive passes, unknown until either happened once.

/// What the probes of one apiserver say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not enough probes yet to decide.
    Unknown,
    /// Healthy.
    Up,
    /// Not healthy.
    Down,
}

/// Hysteresis over consecutive probe results.
#[derive(Debug, Clone)]
pub struct Health {
    state: State,
    fails: u32,
    passes: u32,
    failure_threshold: u32,
    success_threshold: u32,
}

impl Health {
    /// Unknown, with these thresholds (each at least 1).
    pub fn new(failure_threshold: u32, success_threshold: u32) -> Health {
        Health {
            state: State::Unknown,
            fails: 0,
            passes: 0,
            failure_threshold: failure_threshold.max(1),
            success_threshold: success_threshold.max(1),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True when up.
    pub fn up(&self) -> bool {
        self.state == State::Up
    }

    /// True while failures are counting towards `Down` (probe again soon).
    pub fn failing(&self) -> bool {
        self.fails > 0 && self.state != State::Down
    }

    /// Records one probe; true when the state changed.
    pub fn observe(&mut self, ok: bool) -> bool {
        let before = self.state;
        if ok {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            if self.state != State::Up && self.passes >= self.success_threshold {
                self.state = State::Up;
            }
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            if self.state != State::Down && self.fails >= self.failure_threshold {
                self.state = State::Down;
            }
        }
        before != self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_three_failures_up_after_two_passes() {
        let mut h = Health::new(3, 2);
        assert_eq!(h.state(), State::Unknown);
        assert!(!h.observe(true));
        assert!(h.observe(true));
        assert!(h.up());
        // Two failures and a pass: still up, the count starts over.
        h.observe(false);
        h.observe(false);
        h.observe(true);
        h.observe(false);
        h.observe(false);
        assert!(h.up());
        assert!(h.observe(false));
        assert_eq!(h.state(), State::Down);
        // One pass is not enough to come back.
        assert!(!h.observe(true));
        assert_eq!(h.state(), State::Down);
        assert!(h.observe(true));
        assert!(h.up());
    }

    #[test]
    fn unknown_goes_down_after_threshold() {
        let mut h = Health::new(3, 2);
        h.observe(false);
        h.observe(false);
        assert_eq!(h.state(), State::Unknown);
        h.observe(false);
        assert_eq!(h.state(), State::Down);
    }
}
