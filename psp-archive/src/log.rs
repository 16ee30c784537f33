//! The archive file's framing: a header, then CRC-checked frames of Cap'n Proto messages
//! (layout in `schema/archive.capnp`).
//!
//! Recovery rule on open: frames are read in order until one fails its checks. If no valid frame
//! follows it, it is a torn append (power lost mid-write) and the file is cut back to the end of
//! the last good frame: nothing acknowledged is lost, because an append is acknowledged only
//! after its frame is on disk. If a valid frame does follow, the damage is not at the tail and
//! cutting would throw away acknowledged records, so opening fails and names the offset.

/// First bytes of every archive file.
pub const FILE_MAGIC: &[u8; 8] = b"PSPARCH\0";
/// The only file format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the file header.
pub const HEADER_LEN: usize = 16;
/// Size of a frame header: magic, payload length, sequence number, CRC-32.
pub const FRAME_HEADER_LEN: usize = 16;
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

/// CRC-32 over what a frame protects: its length, sequence number and payload.
fn checksum(len: u32, seq: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// One frame ready to append: header and payload. The payload must be a serialized message,
/// whose length is always a multiple of 8, so every frame keeps the file 8-byte aligned.
pub fn encode_frame(seq: u32, payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len().is_multiple_of(8) && payload.len() <= MAX_PAYLOAD,
        "frame payloads are whole words"
    );
    let len = payload.len() as u32;
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(&checksum(len, seq, payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
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
}

impl FrameRef {
    /// The payload's bytes within `file`.
    pub fn payload<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        &file[self.offset..self.offset + self.len]
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
}

/// The file is not an archive, or is damaged before its tail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The header is not an archive header of a known version.
    #[error("not a PSP archive file (bad header: {0})")]
    BadHeader(String),
    /// A damaged frame is followed by valid ones: not a torn append, so nothing is cut.
    #[error(
        "the archive is damaged at byte {offset} ({reason}) and valid records follow; refusing \
         to cut them off. Restore from a snapshot or move the file aside"
    )]
    Corrupt {
        /// Where the damaged frame starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Checks the frame starting at `pos`, expecting sequence number `seq` (or any, for `None`).
fn frame_at(file: &[u8], pos: usize, seq: Option<u32>) -> Result<FrameRef, String> {
    let header = file
        .get(pos..pos + FRAME_HEADER_LEN)
        .ok_or("the file ends inside a frame header")?;
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    if header[..4] != FRAME_MAGIC {
        return Err("no frame marker".into());
    }
    let (len, found_seq, crc) = (word(4), word(8), word(12));
    let len_bytes = len as usize;
    if len_bytes == 0 || !len_bytes.is_multiple_of(8) || len_bytes > MAX_PAYLOAD {
        return Err(format!("impossible payload length {len}"));
    }
    let start = pos + FRAME_HEADER_LEN;
    let payload = file
        .get(start..start + len_bytes)
        .ok_or("the file ends inside a frame's payload")?;
    if checksum(len, found_seq, payload) != crc {
        return Err("checksum mismatch".into());
    }
    if let Some(expected) = seq
        && found_seq != expected
    {
        return Err(format!("sequence number {found_seq}, expected {expected}"));
    }
    Ok(FrameRef {
        offset: start,
        len: len_bytes,
        seq: found_seq,
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
    let mut frames = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < file.len() {
        match frame_at(file, pos, Some(frames.len() as u32)) {
            Ok(frame) => {
                pos = frame.offset + frame.len;
                frames.push(frame);
            }
            Err(reason) => {
                // A valid frame anywhere after this one means the damage is not a torn tail.
                let later = (pos + 8..file.len().saturating_sub(FRAME_HEADER_LEN - 1))
                    .step_by(8)
                    .any(|p| frame_at(file, p, None).is_ok());
                if later {
                    return Err(LogError::Corrupt {
                        offset: pos as u64,
                        reason,
                    });
                }
                return Ok(LogScan {
                    frames,
                    valid_len: pos as u64,
                    torn_bytes: (file.len() - pos) as u64,
                });
            }
        }
    }
    Ok(LogScan {
        frames,
        valid_len: pos as u64,
        torn_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(payloads: &[&[u8]]) -> Vec<u8> {
        let mut file = file_header().to_vec();
        for (seq, p) in payloads.iter().enumerate() {
            file.extend(encode_frame(seq as u32, p));
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
