//! Byte-level helpers shared by the OpenFlow encoders and decoders.

use bytes::{BufMut, BytesMut};

/// Why a byte sequence could not be decoded as an OpenFlow message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A length field is inconsistent with the data around it.
    #[error("bad length in {what}: {len}")]
    BadLength {
        /// What was being decoded.
        what: &'static str,
        /// The offending length.
        len: usize,
    },
    /// A well-formed element this decoder does not model.
    #[error("unsupported {what}: {detail}")]
    Unsupported {
        /// What kind of element.
        what: &'static str,
        /// Identification (type numbers, names).
        detail: String,
    },
}

pub(crate) type DResult<T> = Result<T, DecodeError>;

/// A bounds-checked big-endian reader over a byte slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    fn need(&self, n: usize) -> DResult<()> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated {
                what: self.what,
                need: n,
                have: self.buf.len(),
            })
        } else {
            Ok(())
        }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> DResult<&'a [u8]> {
        self.need(n)?;
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    /// Splits off a sub-reader of `n` bytes.
    pub(crate) fn sub(&mut self, n: usize, what: &'static str) -> DResult<Reader<'a>> {
        Ok(Reader::new(self.bytes(n)?, what))
    }
    pub(crate) fn skip(&mut self, n: usize) -> DResult<()> {
        self.bytes(n).map(|_| ())
    }
    pub(crate) fn u8(&mut self) -> DResult<u8> {
        Ok(self.bytes(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> DResult<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> DResult<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> DResult<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn peek_u16(&self) -> DResult<u16> {
        let mut c = *self;
        c.u16()
    }
    pub(crate) fn peek_u16_at(&self, off: usize) -> DResult<u16> {
        let mut c = *self;
        c.skip(off)?;
        c.u16()
    }
}

/// Pads `out` with zeros so that the bytes written since `start` are a multiple of 8.
pub(crate) fn pad8(out: &mut BytesMut, start: usize) {
    let len = out.len() - start;
    let padded = len.div_ceil(8) * 8;
    out.put_bytes(0, padded - len);
}

/// Writes a big-endian u16 at `at` (used to back-patch lengths).
pub(crate) fn patch_u16(out: &mut BytesMut, at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Back-patches the u16 length at `at` with the byte count written since `start`.
pub(crate) fn patch_len(out: &mut BytesMut, at: usize, start: usize) {
    let len = out.len() - start;
    patch_u16(out, at, u16::try_from(len).unwrap_or(u16::MAX));
}

/// Round up to the next multiple of 8.
pub(crate) fn round8(n: usize) -> usize {
    n.div_ceil(8) * 8
}
