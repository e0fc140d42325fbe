//! The server side of RFC 6455 WebSocket, as much as kubectl's exec protocol needs: the
//! handshake's accept key, and binary/close/ping/pong frames over an upgraded connection.
//! Client frames are masked, server frames are not; fragmented messages are reassembled.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The GUID appended to `Sec-WebSocket-Key` (RFC 6455 section 1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest message accepted from a client (stdin chunks and control frames are small).
const MAX_MESSAGE: u64 = 16 << 20;

/// Opcodes.
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close code of a normal closure.
pub const CLOSE_NORMAL: u16 = 1000;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(ACCEPT_GUID.as_bytes());
    base64(&sha1(&input))
}

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A data message (binary or text), reassembled.
    Data(Vec<u8>),
    /// A ping with its payload (to be answered with a pong).
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// The client closes (code, if any).
    Close(Option<u16>),
}

/// A WebSocket protocol error from the client's side.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// Reading failed (or the connection ended mid-frame).
    #[error("websocket read: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("websocket protocol: {0}")]
    Protocol(&'static str),
}

/// Reads a client's messages; a control frame between the fragments of a message is
/// returned at once and the message keeps its fragments.
#[derive(Debug)]
pub struct Reader<R> {
    inner: R,
    partial: Option<Vec<u8>>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads from `inner`.
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            partial: None,
        }
    }

    /// The next message.
    pub async fn next(&mut self) -> Result<Message, WsError> {
        let r = &mut self.inner;
        loop {
            let mut head = [0u8; 2];
            r.read_exact(&mut head).await?;
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0F;
            if head[1] & 0x80 == 0 {
                return Err(WsError::Protocol("client frame is not masked"));
            }
            let len = match head[1] & 0x7F {
                126 => u64::from(r.read_u16().await?),
                127 => r.read_u64().await?,
                n => u64::from(n),
            };
            let have = self.partial.as_ref().map_or(0, Vec::len) as u64;
            if len.saturating_add(have) > MAX_MESSAGE {
                return Err(WsError::Protocol("message too large"));
            }
            let mut mask = [0u8; 4];
            r.read_exact(&mut mask).await?;
            let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
            r.read_exact(&mut payload).await?;
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            match opcode {
                OP_PING => return Ok(Message::Ping(payload)),
                OP_PONG => return Ok(Message::Pong),
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Message::Close(code));
                }
                OP_TEXT | OP_BINARY if self.partial.is_none() => self.partial = Some(payload),
                OP_CONTINUATION if self.partial.is_some() => {
                    if let Some(p) = self.partial.as_mut() {
                        p.extend_from_slice(&payload);
                    }
                }
                _ => return Err(WsError::Protocol("unexpected opcode")),
            }
            if fin && let Some(data) = self.partial.take() {
                return Ok(Message::Data(data));
            }
        }
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A binary message.
    Binary(Vec<u8>),
    /// A pong answering a ping.
    Pong(Vec<u8>),
    /// A close frame with its code.
    Close(u16),
}

/// Writes one frame and flushes.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, msg: &Outgoing) -> std::io::Result<()> {
    let bytes = match msg {
        Outgoing::Binary(b) => frame(OP_BINARY, b),
        Outgoing::Pong(b) => frame(OP_PONG, b),
        Outgoing::Close(code) => frame(OP_CLOSE, &code.to_be_bytes()),
    };
    w.write_all(&bytes).await?;
    w.flush().await
}

/// SHA-1 (FIPS 180-4), only for the handshake's accept key.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3F) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn sha1_and_base64_known_values() {
        let hex = |d: [u8; 20]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(hex(sha1(&long)), "291e9a6c66994949b57ba5e650361e98fc36b1ba");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[tokio::test]
    async fn reads_fragments_pings_and_close() {
        let big = vec![7u8; 300];
        let mut wire = masked(OP_BINARY, false, b"\x00ab");
        wire.extend(masked(OP_PING, true, b"hb"));
        wire.extend(masked(OP_CONTINUATION, true, &big));
        wire.extend(masked(OP_CLOSE, true, &1000u16.to_be_bytes()));
        let mut r = Reader::new(wire.as_slice());
        // A control frame between fragments is returned at once (RFC 6455 section 5.4).
        assert_eq!(r.next().await.unwrap(), Message::Ping(b"hb".to_vec()));
        let mut expected = b"\x00ab".to_vec();
        expected.extend(&big);
        assert_eq!(r.next().await.unwrap(), Message::Data(expected));
        assert_eq!(r.next().await.unwrap(), Message::Close(Some(1000)));
        assert!(
            r.next().await.is_err(),
            "end of input mid-frame is an error"
        );
        let unmasked = [0x82u8, 0x01, 0x00];
        let mut r = Reader::new(&unmasked[..]);
        assert!(matches!(r.next().await, Err(WsError::Protocol(_))));
    }

    #[test]
    fn frames_carry_extended_lengths() {
        assert_eq!(frame(OP_BINARY, b"\x01hi"), b"\x82\x03\x01hi");
        let f = frame(OP_BINARY, &[0u8; 200]);
        assert_eq!(&f[..4], &[0x82, 126, 0, 200]);
        let f = frame(OP_BINARY, &vec![0u8; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_000 + 10);
    }
}
