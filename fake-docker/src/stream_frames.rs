//! Docker's multiplexed stream framing (logs, and attach without a TTY).

use bytes::{BufMut, Bytes, BytesMut};

/// `[stream, 0, 0, 0, len u32 BE]` + payload. Stream 1 = stdout, 2 = stderr; never 3
/// (bollard treats systemerr as unreachable).
pub fn frame(stream: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + payload.len());
    b.put_u8(stream);
    b.put_bytes(0, 3);
    b.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    b.put_slice(payload);
    b.freeze()
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_have_big_endian_length() {
        let f = super::frame(2, b"hi\n");
        assert_eq!(&f[..], &[2, 0, 0, 0, 0, 0, 0, 3, b'h', b'i', b'\n']);
    }
}
