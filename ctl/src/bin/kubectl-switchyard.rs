//! `kubectl-switchyard`: `switchyardctl` under the name kubectl looks for
//! plugins by (`kubectl switchyard pod default/web`). The same program.

include!("../main.rs");
