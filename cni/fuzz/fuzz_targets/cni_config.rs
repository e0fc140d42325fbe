//! Fuzzes network configuration parsing (stdin) and result conversion between
//! CNI versions. Run: `cd cni/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run cni_config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    switchyard_cni::fuzzing::check_config_input(data);
});
