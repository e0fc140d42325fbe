//! Fuzzes the OVSDB stream codec: any bytes, delivered in any pieces, must
//! decode without panicking, and the pieces must not change the result.
//! Decoded values also go through the datum, update and schema parsers.
//!
//! Run: `cd ovs/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ovsdb_codec seeds/ovsdb_codec -- -max_total_time=60`

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_ovs::ovsdb::codec::fuzz_decode;
use switchyard_ovs::ovsdb::monitor::{parse_updates, parse_updates2};
use switchyard_ovs::ovsdb::{Schema, Value};

fuzz_target!(|data: &[u8]| {
    // The first byte picks up to 8 split points from the next bytes.
    let (splits, input) = match data.split_first() {
        Some((&count, rest)) => {
            let count = usize::from(count % 9).min(rest.len());
            let (cuts, input) = rest.split_at(count);
            let mut splits: Vec<usize> = cuts
                .iter()
                .map(|c| usize::from(*c) * input.len() / 255)
                .collect();
            splits.sort_unstable();
            (splits, input)
        }
        None => (Vec::new(), data),
    };
    let whole = fuzz_decode(input, &[]);
    let pieces = fuzz_decode(input, &splits);
    assert_eq!(whole, pieces, "splitting the input changed the result");
    for value in &whole.0 {
        let _ = Value::from_json(value);
        let _ = parse_updates(value);
        let _ = parse_updates2(value);
        let _ = Schema::from_json(value);
        if let Some(params) = value.get("params").and_then(|p| p.get(1)) {
            let _ = parse_updates2(params);
        }
    }
});
