//! Fuzzes the OpenFlow decoder: any bytes must decode to a message or an
//! error without panicking; whatever decodes must re-encode, decode again
//! and print (Debug and ofctl-style Display) without panicking.
//!
//! Run: `cd ovs/fuzz && mkdir -p corpus/openflow_decode && RUSTC_BOOTSTRAP=1 cargo fuzz run openflow_decode corpus/openflow_decode seeds/openflow_decode -- -max_total_time=60`
//! (new inputs go to the ignored `corpus/`; `seeds/` holds the golden messages and regressions).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_ovs::openflow::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, xid, msg)) = Message::decode(data) {
        let bytes = msg.to_bytes(xid).unwrap();
        let _ = format!("{msg:?}");
        match &msg {
            Message::FlowMod(fm) => {
                let _ = fm.to_string();
            }
            Message::GroupMod(gm) => {
                let _ = gm.to_string();
            }
            Message::MultipartReply { body, .. } => {
                let _ = format!("{body:?}");
            }
            _ => {}
        }
        let _ = Message::decode(&bytes);
    }
});
