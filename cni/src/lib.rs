//! CNI<->agent protocol types.
