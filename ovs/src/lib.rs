//! Open vSwitch clients.
