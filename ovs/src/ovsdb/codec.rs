//! Framing of OVSDB JSON-RPC messages.
//!
//! RFC 7047 messages are JSON objects sent back to back on a stream socket
//! with no length prefix or delimiter. [`JsonCodec`] finds where each value
//! ends by tracking nesting depth and string/escape state byte by byte, so a
//! `}` or `"` inside a string (including `\"` and `\\`) never ends a message,
//! several messages in one read yield several items, and a message split over
//! many reads is assembled. The scan resumes where it stopped, so a large
//! message arriving in small pieces is scanned once (linear time).

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default upper bound for one message (64 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Errors from framing or parsing a message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The socket failed.
    #[error("OVSDB connection I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A message grew beyond the configured limit before it was complete.
    #[error("OVSDB message exceeds the size limit of {limit} bytes")]
    MessageTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A byte that cannot start a JSON-RPC message (only `{` or `[` can).
    #[error("unexpected byte 0x{byte:02x} at the start of an OVSDB message")]
    UnexpectedByte {
        /// The offending byte.
        byte: u8,
    },
    /// A `}` or `]` closed more than was opened.
    #[error("unbalanced closing bracket in OVSDB message")]
    Unbalanced,
    /// The framed bytes are not valid JSON.
    #[error("invalid JSON in OVSDB message: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer closed the stream in the middle of a message.
    #[error("OVSDB connection closed in the middle of a message ({pending} bytes pending)")]
    Truncated {
        /// Bytes of the incomplete message.
        pending: usize,
    },
}

/// Scanner state between calls to [`Decoder::decode`].
#[derive(Debug, Default, Clone, Copy)]
struct ScanState {
    /// Bytes of the buffer already scanned (relative to the buffer start).
    scanned: usize,
    /// Offset of the first byte of the current message, once seen.
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

/// Decodes a byte stream into JSON values and encodes values to bytes.
#[derive(Debug, Clone)]
pub struct JsonCodec {
    max_message_size: usize,
    state: ScanState,
}

impl Default for JsonCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl JsonCodec {
    /// A codec that rejects messages longer than `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        JsonCodec {
            max_message_size,
            state: ScanState::default(),
        }
    }

    /// Scans for the end of the next complete value. Returns its byte range.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
        let st = &mut self.state;
        let mut i = st.scanned;
        while i < buf.len() {
            let byte = buf[i];
            match st.start {
                None => match byte {
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    b'{' | b'[' => {
                        st.start = Some(i);
                        st.depth = 1;
                    }
                    other => return Err(CodecError::UnexpectedByte { byte: other }),
                },
                Some(start) => {
                    if st.in_string {
                        if st.escaped {
                            st.escaped = false;
                        } else if byte == b'\\' {
                            st.escaped = true;
                        } else if byte == b'"' {
                            st.in_string = false;
                        }
                    } else {
                        match byte {
                            b'"' => st.in_string = true,
                            b'{' | b'[' => st.depth += 1,
                            b'}' | b']' => {
                                st.depth = st.depth.checked_sub(1).ok_or(CodecError::Unbalanced)?;
                                if st.depth == 0 {
                                    let end = i + 1;
                                    *st = ScanState::default();
                                    return Ok(Some((start, end)));
                                }
                            }
                            _ => {}
                        }
                    }
                    if i + 1 - start > self.max_message_size {
                        return Err(CodecError::MessageTooLarge {
                            limit: self.max_message_size,
                        });
                    }
                }
            }
            i += 1;
        }
        st.scanned = i;
        Ok(None)
    }
}

impl Decoder for JsonCodec {
    type Item = serde_json::Value;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        match self.scan(buf)? {
            Some((start, end)) => {
                let message = buf.split_to(end);
                let value = serde_json::from_slice(&message[start..])?;
                Ok(Some(value))
            }
            None => {
                // Drop leading whitespace so an idle stream does not grow the buffer.
                if self.state.start.is_none() && !buf.is_empty() {
                    let _ = buf.split_to(buf.len());
                    self.state.scanned = 0;
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        match self.decode(buf)? {
            Some(value) => Ok(Some(value)),
            None if buf.is_empty() => Ok(None),
            None => Err(CodecError::Truncated { pending: buf.len() }),
        }
    }
}

impl Encoder<serde_json::Value> for JsonCodec {
    type Error = CodecError;

    fn encode(&mut self, item: serde_json::Value, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.encode(&item, dst)
    }
}

impl Encoder<&serde_json::Value> for JsonCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &serde_json::Value, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let start = dst.len();
        serde_json::to_writer(dst.writer(), item)?;
        if dst.len() - start > self.max_message_size {
            dst.truncate(start);
            return Err(CodecError::MessageTooLarge {
                limit: self.max_message_size,
            });
        }
        Ok(())
    }
}

/// Decodes `input` delivered in pieces cut at `splits` (sorted offsets).
/// Returns the decoded values up to the first error, and whether an error
/// happened. Used by the fuzz target and by tests; must never panic.
#[doc(hidden)]
pub fn fuzz_decode(input: &[u8], splits: &[usize]) -> (Vec<serde_json::Value>, bool) {
    let mut codec = JsonCodec::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut values = Vec::new();
    let mut last = 0;
    let ends = splits
        .iter()
        .copied()
        .filter(|&s| s <= input.len())
        .chain([input.len()]);
    for end in ends {
        if end < last {
            continue;
        }
        buf.extend_from_slice(&input[last..end]);
        last = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(v)) => values.push(v),
                Ok(None) => break,
                Err(_) => return (values, true),
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(v)) => {
            values.push(v);
            (values, false)
        }
        Ok(None) => (values, false),
        Err(_) => (values, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode_all(codec: &mut JsonCodec, buf: &mut BytesMut) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Some(v) = codec.decode(buf).unwrap() {
            out.push(v);
        }
        out
    }

    #[test]
    fn several_messages_in_one_read() {
        let mut codec = JsonCodec::default();
        let mut buf =
            BytesMut::from(&br#"{"id":1,"result":[]}{"id":2,"result":{"a":[1,2]}}  [3]"#[..]);
        let values = decode_all(&mut codec, &mut buf);
        assert_eq!(
            values,
            vec![
                json!({"id":1,"result":[]}),
                json!({"id":2,"result":{"a":[1,2]}}),
                json!([3])
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn escapes_and_brackets_inside_strings() {
        let text = br#"{"s":"a \"quoted\" } ] { [ brace","t":"back\\","u":"\\\"}","v":"\u007d"}"#;
        let mut codec = JsonCodec::default();
        let mut buf = BytesMut::from(&text[..]);
        buf.extend_from_slice(b"{\"next\":true}");
        let values = decode_all(&mut codec, &mut buf);
        assert_eq!(values.len(), 2);
        assert_eq!(values[0]["s"], "a \"quoted\" } ] { [ brace");
        assert_eq!(values[0]["t"], "back\\");
        assert_eq!(values[0]["u"], "\\\"}");
        assert_eq!(values[0]["v"], "}");
        assert_eq!(values[1], json!({"next": true}));
    }

    #[test]
    fn one_message_across_many_reads_byte_by_byte() {
        let text = br#"{"method":"update","params":["m",{"Bridge":{"x":{"new":{"name":"br\"0}"}}}}],"id":null}"#;
        let mut codec = JsonCodec::default();
        let mut buf = BytesMut::new();
        for (i, byte) in text.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let got = codec.decode(&mut buf).unwrap();
            if i + 1 < text.len() {
                assert!(got.is_none(), "decoded early at byte {i}");
            } else {
                let v = got.unwrap();
                assert_eq!(v["params"][1]["Bridge"]["x"]["new"]["name"], "br\"0}");
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn utf8_multibyte_split_across_reads() {
        let text = "{\"name\":\"pod-\u{00e9}\u{1f600}\"}".as_bytes();
        for split in 0..text.len() {
            let mut codec = JsonCodec::default();
            let mut buf = BytesMut::from(&text[..split]);
            assert!(codec.decode(&mut buf).unwrap().is_none());
            buf.extend_from_slice(&text[split..]);
            let v = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(v["name"], "pod-\u{00e9}\u{1f600}");
        }
    }

    #[test]
    fn large_message() {
        let rows: Vec<_> = (0..20_000)
            .map(|i| json!({"name": format!("port-{i}\"x"), "tag": i}))
            .collect();
        let value = json!({"id": 7, "result": [{"rows": rows}]});
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(bytes.len() > 500_000);
        let mut codec = JsonCodec::default();
        let mut buf = BytesMut::new();
        let mut got = None;
        for chunk in bytes.chunks(4096) {
            buf.extend_from_slice(chunk);
            if let Some(v) = codec.decode(&mut buf).unwrap() {
                got = Some(v);
            }
        }
        assert_eq!(got.unwrap(), value);
    }

    #[test]
    fn size_limit_gives_clear_error() {
        let mut codec = JsonCodec::new(16);
        let mut buf = BytesMut::from(&br#"{"a":"0123456789abcdef"}"#[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::MessageTooLarge { limit: 16 }));
        assert_eq!(
            err.to_string(),
            "OVSDB message exceeds the size limit of 16 bytes"
        );
        // Exactly at the limit is fine.
        let mut codec = JsonCodec::new(9);
        let mut buf = BytesMut::from(&br#"{"a":"b"}"#[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), json!({"a":"b"}));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b"hello"[..], b"}", b"{]]", b"{\"a\":tru}", b"1"] {
            let mut codec = JsonCodec::default();
            let mut buf = BytesMut::from(bad);
            assert!(codec.decode(&mut buf).is_err(), "{:?}", bad);
        }
    }

    #[test]
    fn truncated_at_eof() {
        let mut codec = JsonCodec::default();
        let mut buf = BytesMut::from(&b"{\"a\":"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        let err = codec.decode_eof(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::Truncated { pending: 5 }));
        let mut codec = JsonCodec::default();
        let mut buf = BytesMut::from(&b"  \n"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn encode_is_byte_exact() {
        let mut codec = JsonCodec::default();
        let mut dst = BytesMut::new();
        codec
            .encode(
                json!({"id": 0, "method": "transact", "params": ["Open_vSwitch", {"op": "comment", "comment": "a\"b"}]}),
                &mut dst,
            )
            .unwrap();
        assert_eq!(
            &dst[..],
            &br#"{"id":0,"method":"transact","params":["Open_vSwitch",{"comment":"a\"b","op":"comment"}]}"#[..]
        );
        let mut small = JsonCodec::new(4);
        let mut dst = BytesMut::new();
        assert!(small.encode(json!({"a": 1}), &mut dst).is_err());
        assert!(dst.is_empty());
    }

    /// Feeds the fuzz seed corpus through random splits: every split gives the
    /// same values as decoding the whole input at once, and nothing panics.
    #[test]
    fn fuzz_seed_corpus_random_splits() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/ovsdb_codec");
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        assert!(seeds.len() >= 5, "seed corpus missing");
        seeds.sort();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for seed in &seeds {
            let whole = crate::ovsdb::codec::fuzz_decode(seed, &[]);
            for _ in 0..50 {
                let mut splits: Vec<usize> = (0..(next() % 6))
                    .map(|_| (next() as usize) % (seed.len() + 1))
                    .collect();
                splits.sort_unstable();
                assert_eq!(crate::ovsdb::codec::fuzz_decode(seed, &splits), whole);
            }
        }
    }
}
