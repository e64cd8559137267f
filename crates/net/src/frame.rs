//! Wire framing: a fixed 8-byte header followed by an opaque body.
//!
//! ```text
//! offset 0  magic   "CD"        (2 bytes)
//! offset 2  version 1           (1 byte)
//! offset 3  kind    message type (1 byte; 0 = heartbeat, the rest belong to the caller)
//! offset 4  length  body length, u32 little-endian (4 bytes)
//! offset 8  body    `length` bytes
//! ```
//!
//! The codec validates the header and nothing else: it never looks inside a
//! body. Every check that can be made from the header is made before the body
//! is buffered, so a peer announcing a huge frame costs us eight bytes, not
//! a huge allocation. Any error is a protocol error for that one connection:
//! the caller logs it with the peer's address and closes the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"CD";
/// The only wire version this build speaks.
pub const VERSION: u8 = 1;
/// magic(2) version(1) kind(1) body length u32 LE(4).
pub const HEADER_LEN: usize = 8;
/// Default bound on a frame's body length, in bytes.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Frame kind reserved for transport heartbeats; never delivered to callers
/// of the connection layer and never used for protocol messages.
pub const KIND_HEARTBEAT: u8 = 0;

/// One frame: a message-type byte and an opaque body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub body: Bytes,
}

impl Frame {
    pub fn new(kind: u8, body: impl Into<Bytes>) -> Self {
        Frame {
            kind,
            body: body.into(),
        }
    }

    /// An empty frame of kind [`KIND_HEARTBEAT`].
    pub fn heartbeat() -> Self {
        Frame {
            kind: KIND_HEARTBEAT,
            body: Bytes::new(),
        }
    }

    /// Bytes this frame occupies on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }
}

/// Why a byte stream could not be decoded (or a frame could not be encoded).
///
/// Every variant but `Io` is a protocol error: the peer is not speaking our
/// protocol (or not this version of it), and the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("protocol error: bad magic {got:02x?} (expected {expected:02x?}); peer is not speaking concord")]
    BadMagic { got: [u8; 2], expected: [u8; 2] },
    #[error("protocol error: unsupported frame version {got} (this build speaks {expected})")]
    BadVersion { got: u8, expected: u8 },
    #[error("protocol error: frame body of {len} bytes exceeds frame_bytes_max {max}")]
    TooLong { len: usize, max: usize },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// True when the peer sent something that is not a valid frame (as
    /// opposed to the transport failing underneath us).
    pub fn is_protocol_error(&self) -> bool {
        !matches!(self, FrameError::Io(_))
    }
}

/// Encoder/decoder for [`Frame`] with a bound on the body length.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    frame_bytes_max: usize,
}

impl FrameCodec {
    /// `frame_bytes_max` bounds the body length (not counting the header),
    /// both on decode and on encode. It is capped at `u32::MAX`, the largest
    /// length the header can express.
    pub fn new(frame_bytes_max: usize) -> Self {
        FrameCodec {
            frame_bytes_max: frame_bytes_max.min(u32::MAX as usize),
        }
    }

    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(FRAME_BYTES_MAX_DEFAULT)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        // Validate each header field as soon as its bytes are present, so
        // garbage is rejected early even when it trickles in byte by byte.
        if src.len() >= 2 && src[0..2] != MAGIC {
            return Err(FrameError::BadMagic {
                got: [src[0], src[1]],
                expected: MAGIC,
            });
        }
        if src.len() >= 3 && src[2] != VERSION {
            return Err(FrameError::BadVersion {
                got: src[2],
                expected: VERSION,
            });
        }
        if src.len() < HEADER_LEN {
            src.reserve(HEADER_LEN - src.len());
            return Ok(None);
        }
        let kind = src[3];
        let len = u32::from_le_bytes([src[4], src[5], src[6], src[7]]) as usize;
        if len > self.frame_bytes_max {
            return Err(FrameError::TooLong {
                len,
                max: self.frame_bytes_max,
            });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            // Reserve exactly the rest of this frame: bounded by
            // frame_bytes_max because the length was checked above.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len).freeze();
        Ok(Some(Frame { kind, body }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        if frame.body.len() > self.frame_bytes_max {
            return Err(FrameError::TooLong {
                len: frame.body.len(),
                max: self.frame_bytes_max,
            });
        }
        encode_frame(frame.kind, &frame.body, dst);
        Ok(())
    }
}

/// Append one frame (header + body) to `dst`.
///
/// Does not check `frame_bytes_max`: use [`FrameCodec`]'s `Encoder` impl for
/// that. Callers batching many frames into one write use this directly.
///
/// # Panics
/// If `body` is longer than `u32::MAX` bytes, which no header can describe.
pub fn encode_frame(kind: u8, body: &[u8], dst: &mut BytesMut) {
    let len = u32::try_from(body.len()).expect("frame body longer than u32::MAX bytes");
    dst.reserve(HEADER_LEN + body.len());
    dst.put_slice(&MAGIC);
    dst.put_u8(VERSION);
    dst.put_u8(kind);
    dst.put_u32_le(len);
    dst.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{FramedRead, FramedWrite};

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::new(1, Bytes::from_static(b"prepare")),
            Frame::heartbeat(),
            Frame::new(255, vec![0xAB; 1000]),
            Frame::new(7, Bytes::new()),
            Frame::new(42, vec![7u8; FRAME_BYTES_MAX_DEFAULT]),
        ]
    }

    fn encode_all(frames: &[Frame]) -> BytesMut {
        let mut buf = BytesMut::new();
        let mut codec = FrameCodec::default();
        for f in frames {
            codec.encode(f.clone(), &mut buf).expect("encode");
        }
        buf
    }

    #[test]
    fn header_layout_is_as_documented() {
        let mut buf = BytesMut::new();
        encode_frame(9, b"abc", &mut buf);
        assert_eq!(&buf[..], b"CD\x01\x09\x03\x00\x00\x00abc");
    }

    #[test]
    fn round_trip_in_one_buffer() {
        let frames = sample_frames();
        let mut buf = encode_all(&frames);
        let mut codec = FrameCodec::default();
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).expect("decode") {
            out.push(f);
        }
        assert_eq!(out, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn byte_at_a_time() {
        let frames = sample_frames();
        let wire = encode_all(&frames);
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in wire.iter() {
            buf.put_u8(b);
            while let Some(f) = codec.decode(&mut buf).expect("decode") {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_split_point_of_two_frames() {
        let frames = vec![
            Frame::new(3, Bytes::from_static(b"hello")),
            Frame::new(4, Bytes::from_static(b"world!")),
        ];
        let wire = encode_all(&frames);
        for cut in 0..=wire.len() {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut out = Vec::new();
            while let Some(f) = codec.decode(&mut buf).expect("decode") {
                out.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = codec.decode(&mut buf).expect("decode") {
                out.push(f);
            }
            assert_eq!(out, frames, "cut at {cut}");
        }
    }

    #[test]
    fn reserves_for_the_rest_of_the_frame() {
        let mut wire = BytesMut::new();
        encode_frame(1, &[0u8; 5000], &mut wire);
        let mut buf = BytesMut::from(&wire[..HEADER_LEN]);
        let mut codec = FrameCodec::default();
        assert!(codec.decode(&mut buf).expect("decode").is_none());
        assert!(buf.capacity() >= HEADER_LEN + 5000);
    }

    #[test]
    fn bad_magic() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::BadMagic { got, .. } if got == *b"GE"));
        assert!(err.is_protocol_error());
        assert!(err.to_string().contains("bad magic"));
    }

    #[test]
    fn bad_magic_detected_after_two_bytes() {
        let mut buf = BytesMut::from(&b"XY"[..]);
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::BadMagic { .. }));
    }

    #[test]
    fn bad_version() {
        let mut buf = BytesMut::from(&b"CD\x02\x01\x00\x00\x00\x00"[..]);
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::BadVersion {
                got: 2,
                expected: VERSION
            }
        ));
        assert!(err.to_string().contains("version 2"));
    }

    #[test]
    fn too_long_rejected_from_header_alone() {
        let mut codec = FrameCodec::new(16);
        // Header announcing 17 bytes, no body at all: must fail now.
        let mut buf = BytesMut::from(&b"CD\x01\x01\x11\x00\x00\x00"[..]);
        let cap_before = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { len: 17, max: 16 }));
        assert_eq!(buf.capacity(), cap_before, "no body was reserved");
        // u32::MAX length with the default limit.
        let mut buf = BytesMut::from(&b"CD\x01\x01\xff\xff\xff\xff"[..]);
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { len, .. } if len == u32::MAX as usize));
    }

    #[test]
    fn exactly_max_is_accepted() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::new();
        codec
            .encode(Frame::new(1, vec![1u8; 16]), &mut buf)
            .expect("encode");
        let f = codec.decode(&mut buf).expect("decode").expect("frame");
        assert_eq!(f.body.len(), 16);
    }

    #[test]
    fn encoder_rejects_too_long() {
        let mut codec = FrameCodec::new(4);
        let mut buf = BytesMut::new();
        let err = codec
            .encode(Frame::new(1, vec![0u8; 5]), &mut buf)
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLong { len: 5, max: 4 }));
        assert!(buf.is_empty(), "nothing written on error");
    }

    /// Poor man's fuzzing (a cargo-fuzz target needs nightly): random bytes,
    /// and valid streams with random corruption, fed in random splits, never
    /// panic, and a decoder that errored is never asked to continue.
    #[test]
    fn random_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0xC0DC);
        for _ in 0..5000 {
            let mut wire = if rng.gen_bool(0.5) {
                let n = rng.gen_range(0..64);
                (0..n).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>()
            } else {
                let mut b = BytesMut::new();
                for _ in 0..rng.gen_range(1..4) {
                    let body: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
                    encode_frame(rng.gen(), &body, &mut b);
                }
                b.to_vec()
            };
            if !wire.is_empty() && rng.gen_bool(0.5) {
                let i = rng.gen_range(0..wire.len());
                wire[i] = rng.gen();
            }
            let mut codec = FrameCodec::new(rng.gen_range(0..64));
            let mut buf = BytesMut::new();
            let mut rest = &wire[..];
            'feed: while !rest.is_empty() {
                let take = rng.gen_range(1..=rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(f)) => assert!(f.body.len() <= codec.frame_bytes_max()),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn truncated_stream_is_an_io_error() {
        let mut wire = BytesMut::new();
        encode_frame(1, b"abcdef", &mut wire);
        let truncated = wire[..wire.len() - 2].to_vec();
        let mut reader = FramedRead::new(&truncated[..], FrameCodec::default());
        let item = reader.next().await.expect("an item");
        assert!(matches!(item, Err(FrameError::Io(_))));
    }

    /// Framed reader over a real stream where the writer sends one byte per
    /// write, with flushes, so the reader sees short reads.
    #[tokio::test]
    async fn framed_over_stream_one_byte_writes() {
        let frames = sample_frames()[..4].to_vec();
        let wire = encode_all(&frames).to_vec();
        let (mut w, r) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            for b in wire {
                w.write_all(&[b]).await?;
            }
            w.shutdown().await
        });
        let reader = FramedRead::new(r, FrameCodec::default());
        let items: Vec<Result<Frame, FrameError>> =
            tokio::time::timeout(Duration::from_secs(10), reader.collect())
                .await
                .expect("timed out");
        let got: Vec<Frame> = items.into_iter().collect::<Result<_, _>>().expect("decode");
        assert_eq!(got, frames);
        writer.await.expect("join").expect("write");
    }

    #[tokio::test]
    async fn framed_write_read_round_trip() {
        let frames = sample_frames();
        let (w, r) = tokio::io::duplex(4096);
        let mut sink = FramedWrite::new(w, FrameCodec::default());
        let expected = frames.clone();
        let writer = tokio::spawn(async move {
            for f in frames {
                sink.send(f).await?;
            }
            Ok::<_, FrameError>(())
        });
        let mut reader = FramedRead::new(r, FrameCodec::default());
        for want in expected {
            let got = tokio::time::timeout(Duration::from_secs(10), reader.next())
                .await
                .expect("timed out")
                .expect("item")
                .expect("decode");
            assert_eq!(got, want);
        }
        writer.await.expect("join").expect("write");
    }
}
