//! Stable-Rust fuzz harness for the frame decoder ([`FrameCodec`]), run by
//! plain `cargo test` with a bounded number of cases (ARCHITECTURE.md
//! principle 9; issue 3 item 1).
//!
//! Properties, each checked against a small reference model of the header
//! rules (magic, version, `frame_bytes_max`) written from the module docs of
//! `concord_net::frame`:
//!
//! - **Arbitrary input never panics** (`arbitrary_streams_*`): random bytes,
//!   a valid header followed by garbage, a valid header announcing a body
//!   over `frame_bytes_max`, and valid frames followed by garbage, fed in
//!   arbitrary chunks (one byte at a time included). Every outcome is frames,
//!   "need more data", or a protocol error; after an error the stream is no
//!   longer fed (the connection would be closed). The outcome does not
//!   depend on how the stream was split.
//! - **Round trip under any split** (`valid_frames_round_trip_*`): random
//!   frames (any kind, bodies up to a few KiB, `frame_bytes_max` as low as the
//!   longest body) decode to exactly the frames encoded, whatever the chunk
//!   sizes; a stream cut short yields the complete frames and then waits.
//! - **One corrupted byte** (`corrupted_*`): a valid stream with one header
//!   (or body) byte changed yields an error or different frames, never a
//!   panic; frames before the damaged one are intact, and bad magic / bad
//!   version / a changed kind give exactly the expected outcome.
//!
//! # Running and reproducing
//! ```text
//! cargo test --release -p concord-net --test fuzz_frame              # CI: 2048 cases each
//! PROPTEST_CASES=100000 cargo test --release -p concord-net --test fuzz_frame
//! ```
//! `PROPTEST_CASES` overrides the per-property default here (see
//! [`config`]). A failure prints the minimal failing input and appends its
//! seed to `crates/net/tests/fuzz_frame.proptest-regressions`; every later run
//! replays the seeds in that file first, so commit it with the fix.
//! `PROPTEST_RNG_SEED=<n>` makes a whole run deterministic.

use bytes::{BufMut, BytesMut};
use concord_net::frame::{
    encode_frame, Frame, FrameCodec, FrameError, FRAME_BYTES_MAX_DEFAULT, HEADER_LEN, MAGIC,
    VERSION,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tokio_util::codec::{Decoder, Encoder};

/// Cases per property: `PROPTEST_CASES` if set, else `default_cases`.
/// Failures persist beside this file (see the module docs).
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// How a stream ends once all its bytes are fed (or feeding stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Every byte was consumed by complete frames.
    Clean,
    /// A partial frame of this many bytes is waiting for more data.
    NeedMore(usize),
    /// A protocol error; the connection is closed and nothing more is fed.
    Error(ErrorKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    BadMagic,
    BadVersion,
    TooLong { len: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Frame>,
    end: End,
}

/// How the stream is cut into reads.
#[derive(Debug, Clone)]
enum Split {
    Whole,
    OneByte,
    /// Chunk sizes, used in turn and cycled.
    Chunks(Vec<usize>),
}

fn split() -> impl Strategy<Value = Split> {
    prop_oneof![
        1 => Just(Split::Whole),
        1 => Just(Split::OneByte),
        3 => prop::collection::vec(1usize..=64, 1..16).prop_map(Split::Chunks),
        1 => prop::collection::vec(1usize..=4096, 1..4).prop_map(Split::Chunks),
    ]
}

fn chunks<'a>(wire: &'a [u8], split: &Split) -> Vec<&'a [u8]> {
    match split {
        Split::Whole => vec![wire],
        Split::OneByte => wire.chunks(1).collect(),
        Split::Chunks(sizes) => {
            let mut out = Vec::new();
            let mut rest = wire;
            for &n in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (a, b) = rest.split_at(n.min(rest.len()));
                out.push(a);
                rest = b;
            }
            out
        }
    }
}

/// Feed `wire` to a fresh decoder in the chunks `split` gives, decoding
/// every frame available after each chunk, and stopping at the first error
/// as a connection would. Checks the invariants every step must keep.
fn feed(wire: &[u8], max: usize, split: &Split) -> Result<Outcome, TestCaseError> {
    let mut codec = FrameCodec::new(max);
    prop_assert_eq!(codec.frame_bytes_max(), max.min(u32::MAX as usize));
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks(wire, split) {
        buf.put_slice(chunk);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    prop_assert!(f.body.len() <= codec.frame_bytes_max());
                    prop_assert_eq!(before - buf.len(), f.wire_len(), "consumed one frame");
                    frames.push(f);
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before, "waiting consumes nothing");
                    break;
                }
                Err(e) => {
                    prop_assert!(
                        e.is_protocol_error(),
                        "decode gave a non-protocol error: {}",
                        e
                    );
                    let kind = match e {
                        FrameError::BadMagic { got, expected } => {
                            prop_assert_ne!(got, expected);
                            ErrorKind::BadMagic
                        }
                        FrameError::BadVersion { got, expected } => {
                            prop_assert_ne!(got, expected);
                            ErrorKind::BadVersion
                        }
                        FrameError::TooLong { len, max: m } => {
                            prop_assert_eq!(m, codec.frame_bytes_max());
                            prop_assert!(len > m);
                            ErrorKind::TooLong { len }
                        }
                        FrameError::Io(e) => return Err(TestCaseError::fail(e.to_string())),
                    };
                    return Ok(Outcome {
                        frames,
                        end: End::Error(kind),
                    });
                }
            }
        }
    }
    // End of stream: the tokio-util default `decode_eof` must agree.
    let left = buf.len();
    match codec.decode_eof(&mut buf) {
        Ok(None) => prop_assert_eq!(left, 0, "eof with bytes left must be an error"),
        Ok(Some(f)) => prop_assert!(false, "eof produced a frame the loop missed: {:?}", f),
        Err(FrameError::Io(_)) => prop_assert!(left > 0, "eof error with no bytes left"),
        Err(e) => prop_assert!(false, "eof gave a protocol error the loop missed: {}", e),
    }
    Ok(Outcome {
        frames,
        end: if left == 0 {
            End::Clean
        } else {
            End::NeedMore(left)
        },
    })
}

/// The header rules of `concord_net::frame`, restated independently.
fn reference(wire: &[u8], max: usize) -> Outcome {
    let max = max.min(u32::MAX as usize);
    let mut frames = Vec::new();
    let mut rest = wire;
    let end = loop {
        if rest.is_empty() {
            break End::Clean;
        }
        if rest.len() >= 2 && rest[..2] != MAGIC {
            break End::Error(ErrorKind::BadMagic);
        }
        if rest.len() >= 3 && rest[2] != VERSION {
            break End::Error(ErrorKind::BadVersion);
        }
        if rest.len() < HEADER_LEN {
            break End::NeedMore(rest.len());
        }
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        if len > max {
            break End::Error(ErrorKind::TooLong { len });
        }
        if rest.len() < HEADER_LEN + len {
            break End::NeedMore(rest.len());
        }
        frames.push(Frame::new(
            rest[3],
            rest[HEADER_LEN..HEADER_LEN + len].to_vec(),
        ));
        rest = &rest[HEADER_LEN + len..];
    };
    Outcome { frames, end }
}

/// `frame_bytes_max` values: tiny, small, the default. (Not `u32::MAX`:
/// a header announcing ~4 GiB would make the decoder reserve it, which is
/// the configured bound doing its job, not a decoder bug.)
fn max_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        1usize..=16,
        0usize..=512,
        Just(4096usize),
        Just(FRAME_BYTES_MAX_DEFAULT),
    ]
}

fn header(kind: u8, len: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.push(VERSION);
    h.push(kind);
    h.extend_from_slice(&len.to_le_bytes());
    h
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// Byte streams that are mostly not valid: pure noise, noise behind a
/// plausible (or partial) header, over-long announced lengths, and valid
/// frames with noise after them.
fn hostile_stream(max: usize) -> BoxedStrategy<Vec<u8>> {
    let over_long = (max as u64 + 1..=u32::MAX as u64).prop_map(|l| l as u32);
    prop_oneof![
        // Pure noise, up to a few KiB.
        bytes(4096),
        // A near-valid header (each field right or wrong), cut anywhere,
        // sometimes followed by noise: every header check at every length.
        (
            prop::array::uniform3(any::<bool>()),
            any::<[u8; 3]>(),
            any::<u8>(),
            prop_oneof![0u32..=16, any::<u32>()],
            0usize..=HEADER_LEN,
            prop_oneof![Just(Vec::new()), bytes(64)],
        )
            .prop_map(|(ok, wrong, kind, len, cut, tail)| {
                let mut w = header(kind, len);
                for f in 0..3 {
                    if !ok[f] {
                        w[f] = wrong[f];
                    }
                }
                w.truncate(cut);
                w.extend(tail);
                w
            }),
        // A valid header with any length, then noise (any amount of it).
        (any::<u8>(), any::<u32>(), bytes(1024)).prop_map(|(k, l, tail)| {
            let mut w = header(k, l);
            w.extend(tail);
            w
        }),
        // A valid header with a small length, then noise: often complete
        // frames whose successors are garbage.
        (any::<u8>(), 0u32..=64, bytes(256)).prop_map(|(k, l, tail)| {
            let mut w = header(k, l);
            w.extend(tail);
            w
        }),
        // A header announcing more than frame_bytes_max, with some body.
        (any::<u8>(), over_long, bytes(64)).prop_map(|(k, l, tail)| {
            let mut w = header(k, l);
            w.extend(tail);
            w
        }),
        // Valid frames, then noise.
        (valid_frames(max.min(256)), bytes(256)).prop_map(|(frames, tail)| {
            let mut w = encode_all(&frames).to_vec();
            w.extend(tail);
            w
        }),
    ]
    .boxed()
}

/// Frames whose bodies are at most `max` bytes.
fn valid_frames(max: usize) -> BoxedStrategy<Vec<Frame>> {
    valid_frames_at_least(max, 0)
}

/// At least `min` (and under 12) frames whose bodies are at most `max` bytes.
fn valid_frames_at_least(max: usize, min: usize) -> BoxedStrategy<Vec<Frame>> {
    let body = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..=max.min(64)),
        1 => prop::collection::vec(any::<u8>(), 0..=max.min(4096)),
        1 => Just(vec![0xA5u8; max.min(4096)]),
    ];
    prop::collection::vec(
        (any::<u8>(), body).prop_map(|(kind, body)| Frame::new(kind, body)),
        min..12,
    )
    .boxed()
}

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for f in frames {
        encode_frame(f.kind, &f.body, &mut buf);
    }
    buf
}

fn max_and_hostile() -> impl Strategy<Value = (usize, Vec<u8>)> {
    max_len().prop_flat_map(|max| (Just(max), hostile_stream(max)))
}

/// A `frame_bytes_max`, frames that fit it, and sometimes a max exactly as
/// long as the longest body (the boundary the decoder must accept).
fn max_and_frames() -> impl Strategy<Value = (usize, Vec<Frame>)> {
    max_and_frames_at_least(0)
}

/// As [`max_and_frames`], with at least `min` frames and, when `min > 0`,
/// a body of at least one byte in the first of them (so there is always a
/// header and a body byte to damage, without rejecting cases).
fn max_and_frames_at_least(min: usize) -> impl Strategy<Value = (usize, Vec<Frame>)> {
    let low = usize::from(min > 0);
    prop_oneof![Just(4096usize), Just(FRAME_BYTES_MAX_DEFAULT), low..=300]
        .prop_flat_map(move |max| {
            let frames = valid_frames_at_least(max, min).prop_map(move |mut frames| {
                if let Some(first) = frames.first_mut() {
                    if first.body.is_empty() && low > 0 {
                        first.body = vec![0x5Au8].into();
                    }
                }
                frames
            });
            (Just(max), frames, any::<bool>())
        })
        .prop_map(|(max, frames, tight)| {
            let longest = frames.iter().map(|f| f.body.len()).max().unwrap_or(0);
            (if tight { longest } else { max }, frames)
        })
}

proptest! {
    #![proptest_config(config(2048))]

    /// Hostile bytes in any split: no panic, and exactly what the reference
    /// model says, whatever the split.
    #[test]
    fn arbitrary_streams_never_panic_and_match_the_model(
        (max, wire) in max_and_hostile(),
        split in split(),
    ) {
        let got = feed(&wire, max, &split)?;
        prop_assert_eq!(&got, &reference(&wire, max));
    }

    /// The same hostile stream fed whole, byte by byte and in random chunks
    /// gives one outcome.
    #[test]
    fn arbitrary_streams_outcome_is_split_independent(
        (max, wire) in max_and_hostile(),
        split in split(),
    ) {
        let whole = feed(&wire, max, &Split::Whole)?;
        prop_assert_eq!(&feed(&wire, max, &Split::OneByte)?, &whole);
        prop_assert_eq!(&feed(&wire, max, &split)?, &whole);
    }

    /// Valid frames round-trip exactly under any split; the codec's
    /// `Encoder` and `encode_frame` write identical bytes.
    #[test]
    fn valid_frames_round_trip_under_any_split(
        (max, frames) in max_and_frames(),
        split in split(),
    ) {
        let wire = encode_all(&frames);
        let mut codec = FrameCodec::new(max);
        let mut via_encoder = BytesMut::new();
        for f in &frames {
            codec.encode(f.clone(), &mut via_encoder)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(&via_encoder[..], &wire[..]);
        prop_assert_eq!(wire.len(), frames.iter().map(Frame::wire_len).sum::<usize>());

        for s in [split, Split::OneByte] {
            let got = feed(&wire, max, &s)?;
            prop_assert_eq!(&got.frames, &frames, "split {:?}", s);
            prop_assert_eq!(got.end, End::Clean);
        }
    }

    /// A valid stream cut short yields its complete frames, then waits for
    /// the rest (and is an i/o error at end of stream, checked in `feed`).
    #[test]
    fn valid_frames_round_trip_truncated_stream_waits(
        (max, frames) in max_and_frames(),
        cut in any::<prop::sample::Index>(),
        split in split(),
    ) {
        let wire = encode_all(&frames);
        let cut = cut.index(wire.len() + 1);
        let mut complete = 0;
        let mut end = 0;
        for f in &frames {
            if end + f.wire_len() > cut {
                break;
            }
            end += f.wire_len();
            complete += 1;
        }
        let got = feed(&wire[..cut], max, &split)?;
        prop_assert_eq!(&got.frames[..], &frames[..complete]);
        let expected = if end == cut { End::Clean } else { End::NeedMore(cut - end) };
        prop_assert_eq!(got.end, expected);
    }

    /// One changed header byte of one frame: frames before it are intact,
    /// nothing panics, and the outcome is the model's under any split.
    #[test]
    fn corrupted_header_byte_is_an_error_or_a_different_frame(
        (max, frames) in max_and_frames_at_least(1),
        which in any::<prop::sample::Index>(),
        offset in 0..HEADER_LEN,
        flip in 1u8..=255,
        split in split(),
    ) {
        let i = which.index(frames.len());
        let mut wire = encode_all(&frames).to_vec();
        let start: usize = frames[..i].iter().map(Frame::wire_len).sum();
        wire[start + offset] ^= flip;

        let got = feed(&wire, max, &split)?;
        prop_assert_eq!(&got, &reference(&wire, max));
        prop_assert_eq!(&got.frames[..i], &frames[..i]);
        match offset {
            0 | 1 => {
                prop_assert_eq!(got.frames.len(), i);
                prop_assert_eq!(got.end, End::Error(ErrorKind::BadMagic));
            }
            2 => {
                prop_assert_eq!(got.frames.len(), i);
                prop_assert_eq!(got.end, End::Error(ErrorKind::BadVersion));
            }
            3 => {
                // The kind is not validated: same stream, one kind changed.
                let mut expected = frames.clone();
                expected[i].kind ^= flip;
                prop_assert_eq!(&got.frames, &expected);
                prop_assert_eq!(got.end, End::Clean);
            }
            _ => {
                // A changed length: an error, a wait for more, or frames that
                // differ from the originals from `i` on.
                prop_assert!(
                    got.end != End::Clean || got.frames != frames,
                    "a changed length went unnoticed"
                );
            }
        }
    }

    /// One changed body byte is invisible to the codec (it never looks
    /// inside bodies): same frames, one byte different.
    #[test]
    fn corrupted_body_byte_changes_only_that_body(
        (max, frames) in max_and_frames_at_least(1),
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        split in split(),
    ) {
        let with_body: Vec<usize> = (0..frames.len()).filter(|&i| !frames[i].body.is_empty()).collect();
        let i = with_body[which.index(with_body.len())];
        let j = at.index(frames[i].body.len());
        let mut wire = encode_all(&frames).to_vec();
        let start: usize = frames[..i].iter().map(Frame::wire_len).sum();
        wire[start + HEADER_LEN + j] ^= flip;

        let got = feed(&wire, max, &split)?;
        let mut expected = frames.clone();
        let mut body = expected[i].body.to_vec();
        body[j] ^= flip;
        expected[i].body = body.into();
        prop_assert_eq!(&got.frames, &expected);
        prop_assert_eq!(got.end, End::Clean);
    }
}
