//! The property the `cni_config` fuzz target checks, shared with the unit test
//! that replays its seed corpus (`cni/tests/fuzz_corpus.rs`).

use crate::config::parse_config;
use crate::env::CniArgs;
use crate::result::CniResult;
use crate::version::SUPPORTED_VERSIONS;

/// Feeds `data` to configuration parsing and result conversion. Panics if a
/// property fails:
/// - parsing never panics, and every error has a well-known code and a message;
/// - a parsed `prevResult`, printed in any supported version and read back,
///   equals the original minus what that version cannot carry, and printing
///   the read-back result again gives the same bytes.
pub fn check_config_input(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = CniArgs::parse(text);
    }
    let config = match parse_config(data) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                [1, 2, 6, 7].contains(&e.code),
                "unexpected code {} for config error",
                e.code
            );
            assert!(!e.msg.is_empty());
            return;
        }
    };
    if let Some(prev) = &config.prev_result {
        check_result_round_trip(prev);
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(result) = CniResult::from_value(&value)
    {
        check_result_round_trip(&result);
    }
}

fn check_result_round_trip(result: &CniResult) {
    for version in SUPPORTED_VERSIONS {
        let out = result.to_output(version);
        let value: serde_json::Value = serde_json::from_str(&out).expect("printed result is JSON");
        assert_eq!(value["cniVersion"], version.as_str());
        let back = CniResult::from_value(&value).expect("printed result reads back");
        let mut expected = result.clone();
        if version.is_legacy_result() {
            for i in &mut expected.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
        }
        assert_eq!(back, expected, "round trip through {version}");
        assert_eq!(
            back.to_output(version),
            out,
            "printing is stable for {version}"
        );
    }
}
