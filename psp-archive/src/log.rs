//! The archive file's framing: a header, then checked, chained frames of Cap'n Proto messages
//! (layout in `schema/archive.capnp`).
//!
//! Recovery on open reads frames in order from the start (never searching for one, so a
//! frame-shaped run of bytes inside record data is only ever read as data) and tells the two
//! ways a file can end badly apart by what is there:
//!
//! * **A torn append**: the file ends inside the last frame: fewer bytes follow the last good
//!   frame than the smallest frame needs, or a frame whose header checks out ends before its
//!   payload does. An append is acknowledged only after its frame is on disk, so nothing
//!   acknowledged is lost by cutting it: the open cuts it and reports the bytes.
//! * **Damage**: a frame that is all there but fails a check (its header's checksum, its
//!   payload's, its sequence number, or its link to the frame before), or a run of zeros long
//!   enough to have held frames. A bad disk, a bad copy or a sparse restore does that, and
//!   cutting it could lose acknowledged records. (A crash can too, when the file system wrote an
//!   append's pages out of order; that append was never acknowledged, so `repair` loses nothing.)
//!   The open refuses and names the byte offset; `psp-totebox repair` moves the damaged tail
//!   aside (never deletes it) when the operator decides to.

/// First bytes of every archive file.
pub const FILE_MAGIC: &[u8; 8] = b"PSPARCH\0";
/// The only file format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 2;
/// Size of the file header.
pub const HEADER_LEN: usize = 16;
/// Size of a frame header: magic, payload length, sequence number, payload CRC, the previous
/// frame's payload CRC, and the header's own CRC.
pub const FRAME_HEADER_LEN: usize = 24;
/// The smallest complete frame: a header and one word of payload.
const MIN_FRAME_LEN: usize = FRAME_HEADER_LEN + 8;
/// Marks the start of every frame.
const FRAME_MAGIC: [u8; 4] = *b"PSPF";
/// Largest payload a frame may carry (a batch of about a million small records).
pub const MAX_PAYLOAD: usize = 256 << 20;

/// The 16-byte file header.
pub fn file_header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(FILE_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// What the first frame chains to: the CRC of the file header.
pub fn first_link() -> u32 {
    crc32fast::hash(&file_header())
}

/// CRC-32 over what a frame's payload checksum protects: its length, sequence number and
/// payload.
fn checksum(len: u32, seq: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// One frame ready to append: header and payload, chained to the frame before by `previous`
/// (that frame's payload CRC, or [`first_link`] for the first). The payload must be a
/// serialized message, whose length is always a multiple of 8, so every frame keeps the file
/// 8-byte aligned. Returns the frame and its payload CRC (what the next frame chains to).
pub fn encode_frame(seq: u32, previous: u32, payload: &[u8]) -> (Vec<u8>, u32) {
    assert!(
        payload.len().is_multiple_of(8) && payload.len() <= MAX_PAYLOAD,
        "frame payloads are whole words"
    );
    let len = payload.len() as u32;
    let crc = checksum(len, seq, payload);
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(&previous.to_le_bytes());
    let header_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&header_crc.to_le_bytes());
    frame.extend_from_slice(payload);
    (frame, crc)
}

/// Where one valid frame's payload lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    /// Offset of the payload (8-byte aligned).
    pub offset: usize,
    /// Length of the payload.
    pub len: usize,
    /// The frame's sequence number.
    pub seq: u32,
    /// Its payload CRC: what the next frame chains to.
    pub crc: u32,
}

impl FrameRef {
    /// The payload's bytes within `file`.
    pub fn payload<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        &file[self.offset..self.offset + self.len]
    }

    /// Where the frame starts (its header).
    pub fn start(&self) -> usize {
        self.offset - FRAME_HEADER_LEN
    }
}

/// What reading the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogScan {
    /// The valid frames, in order.
    pub frames: Vec<FrameRef>,
    /// Length of the valid prefix: header plus valid frames.
    pub valid_len: u64,
    /// Bytes after the valid prefix that belong to a torn append (0 when the file ended cleanly).
    pub torn_bytes: u64,
    /// What the next frame chains to.
    pub last_crc: u32,
}

/// The file is not an archive, or a complete frame in it is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The header is not an archive header of a known version.
    #[error("not a PSP archive file (bad header: {0})")]
    BadHeader(String),
    /// A complete frame fails its checks: damage, not a torn append, so nothing is cut.
    #[error(
        "the archive is damaged at byte {offset} ({reason}); refusing to cut acknowledged \
         records off. Restore from a snapshot, or run `psp-totebox repair` to move the damaged \
         tail aside"
    )]
    Corrupt {
        /// Where the damaged frame starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// How the bytes at a frame position end the log.
enum Bad {
    /// An incomplete last write: cut.
    Torn,
    /// A complete frame that fails a check: refuse.
    Damaged(String),
}

/// Checks the frame starting at `pos`, which must be number `seq` and chain to `previous`.
fn frame_at(file: &[u8], pos: usize, seq: u32, previous: u32) -> Result<FrameRef, Bad> {
    let rest = &file[pos..];
    // Too short to hold even the smallest complete frame: only a write cut short leaves that.
    if rest.len() < MIN_FRAME_LEN {
        return Err(Bad::Torn);
    }
    if rest.iter().all(|&b| b == 0) {
        // Zeros where a whole frame would fit: an append the disk never wrote, or acknowledged
        // frames a bad copy or a sparse restore erased. Nothing tells the two apart, so the
        // bytes are refused, not cut; `repair` moves them aside once the operator has looked.
        return Err(Bad::Damaged(format!(
            "{} bytes of zeros where a frame should start",
            rest.len()
        )));
    }
    let header = &rest[..FRAME_HEADER_LEN];
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[..20]) != word(20) {
        return Err(Bad::Damaged("the frame header fails its checksum".into()));
    }
    if header[..4] != FRAME_MAGIC {
        return Err(Bad::Damaged("no frame marker".into()));
    }
    let (len, found_seq, crc, chain) = (word(4), word(8), word(12), word(16));
    if found_seq != seq {
        return Err(Bad::Damaged(format!(
            "sequence number {found_seq}, expected {seq}"
        )));
    }
    if chain != previous {
        return Err(Bad::Damaged(
            "the frame does not follow the one before it".into(),
        ));
    }
    let len_bytes = len as usize;
    if len_bytes == 0 || !len_bytes.is_multiple_of(8) || len_bytes > MAX_PAYLOAD {
        return Err(Bad::Damaged(format!("impossible payload length {len}")));
    }
    let start = pos + FRAME_HEADER_LEN;
    let Some(payload) = file.get(start..start + len_bytes) else {
        return Err(Bad::Torn);
    };
    if checksum(len, found_seq, payload) != crc {
        return Err(Bad::Damaged("the payload fails its checksum".into()));
    }
    Ok(FrameRef {
        offset: start,
        len: len_bytes,
        seq: found_seq,
        crc,
    })
}

/// Reads the log in `file` (the whole file's bytes) and applies the recovery rule.
pub fn scan(file: &[u8]) -> Result<LogScan, LogError> {
    if file.len() < HEADER_LEN {
        return Err(LogError::BadHeader(format!("{} bytes long", file.len())));
    }
    if &file[..8] != FILE_MAGIC {
        return Err(LogError::BadHeader("wrong magic bytes".into()));
    }
    let version = u32::from_le_bytes(file[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(LogError::BadHeader(format!(
            "format version {version}; this build reads version {FORMAT_VERSION}"
        )));
    }
    let mut frames: Vec<FrameRef> = Vec::new();
    let mut pos = HEADER_LEN;
    let mut previous = first_link();
    while pos < file.len() {
        match frame_at(file, pos, frames.len() as u32, previous) {
            Ok(frame) => {
                pos = frame.offset + frame.len;
                previous = frame.crc;
                frames.push(frame);
            }
            Err(Bad::Torn) => {
                return Ok(LogScan {
                    frames,
                    valid_len: pos as u64,
                    torn_bytes: (file.len() - pos) as u64,
                    last_crc: previous,
                });
            }
            Err(Bad::Damaged(reason)) => {
                return Err(LogError::Corrupt {
                    offset: pos as u64,
                    reason,
                });
            }
        }
    }
    Ok(LogScan {
        frames,
        valid_len: pos as u64,
        torn_bytes: 0,
        last_crc: previous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(payloads: &[&[u8]]) -> Vec<u8> {
        let mut file = file_header().to_vec();
        let mut previous = first_link();
        for (seq, p) in payloads.iter().enumerate() {
            let (frame, crc) = encode_frame(seq as u32, previous, p);
            file.extend(frame);
            previous = crc;
        }
        file
    }

    #[test]
    fn frames_read_back_in_order() {
        let file = log(&[&[1; 8], &[2; 16]]);
        let scan = scan(&file).unwrap();
        assert_eq!(scan.frames.len(), 2);
        assert_eq!(scan.frames[1].payload(&file), &[2; 16]);
        assert_eq!((scan.valid_len, scan.torn_bytes), (file.len() as u64, 0));
    }

    #[test]
    fn a_torn_tail_is_reported_not_fatal() {
        let file = log(&[&[1; 8], &[2; 16]]);
        let cut = &file[..file.len() - 3];
        let scan = scan(cut).unwrap();
        assert_eq!(scan.frames.len(), 1);
        assert_eq!(scan.valid_len, (HEADER_LEN + FRAME_HEADER_LEN + 8) as u64);
    }

    #[test]
    fn damage_before_the_tail_refuses_to_open() {
        let mut file = log(&[&[1; 8], &[2; 16], &[3; 8]]);
        file[HEADER_LEN + FRAME_HEADER_LEN + 8 + FRAME_HEADER_LEN] ^= 0xff;
        assert!(matches!(scan(&file), Err(LogError::Corrupt { .. })));
    }

    #[test]
    fn zeros_too_short_for_a_frame_are_cut_and_longer_runs_refused() {
        let mut file = log(&[&[1; 8]]);
        let end = file.len();
        file.extend([0u8; MIN_FRAME_LEN - 1]);
        let scan_ = scan(&file).unwrap();
        assert_eq!(
            (scan_.valid_len, scan_.torn_bytes),
            (end as u64, (MIN_FRAME_LEN - 1) as u64)
        );
        // Long enough to have held a frame: it may have, so it is not cut.
        file.push(0);
        assert!(
            matches!(scan(&file), Err(LogError::Corrupt { offset, .. }) if offset == end as u64)
        );
    }

    #[test]
    fn other_files_are_not_archives() {
        assert!(matches!(
            scan(b"hello, world, not an archive"),
            Err(LogError::BadHeader(_))
        ));
        let mut future = file_header();
        future[8] = 9;
        assert!(matches!(scan(&future), Err(LogError::BadHeader(_))));
    }
}
