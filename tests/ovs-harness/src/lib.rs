//! OVS test harness.
