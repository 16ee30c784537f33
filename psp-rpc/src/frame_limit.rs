//! A server's message limit, told to the peer rather than felt as a reset.
//!
//! Cap'n Proto refuses a message over the reader's limit and ends the connection; left at that,
//! the peer, still sending its large message, gets a TCP reset and never learns why. This reader
//! sits in front of the RPC system: it reads each frame's segment table first, and when the
//! frame is over the limit it reads and discards the frame's body (the peer is sending it
//! anyway; at most [`MAX_DRAINED`] bytes) before failing the read with `limit.message: ...`.
//! The RPC system then sends the peer an `Abort` carrying that text, which the peer reads as the
//! error `limit.message`, and closes. Frames within the limit pass through untouched and
//! unbuffered.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::AsyncRead;

/// Most bytes of an oversized frame read and dropped so the peer can read the refusal; a frame
/// declaring more than this fails at once.
pub const MAX_DRAINED: u64 = 256 << 20;

/// Most segments a frame may declare.
const MAX_SEGMENTS: u64 = 512;

/// Where the reader is in the current frame.
#[derive(Debug)]
enum State {
    /// Collecting the segment table (held back until complete and judged).
    Table(Vec<u8>),
    /// Handing on the judged table, then `body` bytes.
    Passing {
        table: Vec<u8>,
        sent: usize,
        body: u64,
    },
    /// Dropping `left` bytes of an oversized frame, then failing with the refusal.
    Draining { left: u64, refusal: String },
    /// Failed: every read fails the same way.
    Failed(String),
}

/// Wraps a server's incoming stream (see the module docs).
#[derive(Debug)]
pub struct FrameLimit<R> {
    inner: R,
    max_bytes: u64,
    state: State,
}

impl<R> FrameLimit<R> {
    /// Reads `inner`, refusing frames over `max_words` words.
    pub fn new(inner: R, max_words: usize) -> Self {
        Self {
            inner,
            max_bytes: (max_words as u64).saturating_mul(8),
            state: State::Table(Vec::new()),
        }
    }
}

/// The table's length in bytes once its first word is known, and the body's once it is whole.
fn judge(table: &[u8]) -> Option<(usize, Option<u64>)> {
    let first = table.get(..4)?;
    let segments = u64::from(u32::from_le_bytes(first.try_into().expect("4 bytes"))) + 1;
    let len = (4 * (1 + segments as usize)).next_multiple_of(8);
    if segments > MAX_SEGMENTS {
        return Some((len.min(8), Some(u64::MAX)));
    }
    let body = table.get(4..4 + 4 * segments as usize).map(|sizes| {
        sizes
            .chunks_exact(4)
            .map(|s| u64::from(u32::from_le_bytes(s.try_into().expect("4 bytes"))) * 8)
            .sum()
    });
    Some((len, body))
}

fn refused(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameLimit<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Failed(message) => return Poll::Ready(Err(refused(message))),
                State::Passing { table, sent, body } => {
                    if *sent < table.len() {
                        let n = out.len().min(table.len() - *sent);
                        out[..n].copy_from_slice(&table[*sent..*sent + n]);
                        *sent += n;
                        return Poll::Ready(Ok(n));
                    }
                    if *body == 0 {
                        this.state = State::Table(Vec::new());
                        continue;
                    }
                    let want = out.len().min(usize::try_from(*body).unwrap_or(usize::MAX));
                    let n = match Pin::new(&mut this.inner).poll_read(cx, &mut out[..want]) {
                        Poll::Ready(Ok(n)) => n,
                        other => return other,
                    };
                    if n == 0 {
                        return Poll::Ready(Ok(0));
                    }
                    *body -= n as u64;
                    return Poll::Ready(Ok(n));
                }
                State::Draining { left, refusal } => {
                    if *left == 0 {
                        let message = std::mem::take(refusal);
                        this.state = State::Failed(message.clone());
                        return Poll::Ready(Err(refused(&message)));
                    }
                    let mut sink = [0u8; 16 * 1024];
                    let want = sink.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    match Pin::new(&mut this.inner).poll_read(cx, &mut sink[..want]) {
                        Poll::Ready(Ok(0)) => *left = 0,
                        Poll::Ready(Ok(n)) => *left -= n as u64,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Table(table) => {
                    let need = match judge(table) {
                        None => 4,
                        Some((len, None)) => len,
                        Some((len, Some(body))) if table.len() >= len || body == u64::MAX => {
                            let total = (len as u64).saturating_add(body);
                            if total > this.max_bytes {
                                let refusal = format!(
                                    "limit.message: a message of {} bytes; this server reads \
                                     messages of at most {} bytes",
                                    if body == u64::MAX {
                                        "too many segments and more".to_owned()
                                    } else {
                                        total.to_string()
                                    },
                                    this.max_bytes
                                );
                                tracing::warn!("refused an oversized message: {refusal}");
                                this.state = if body > MAX_DRAINED {
                                    State::Failed(refusal)
                                } else {
                                    State::Draining {
                                        left: body,
                                        refusal,
                                    }
                                };
                            } else {
                                let table = std::mem::take(table);
                                this.state = State::Passing {
                                    table,
                                    sent: 0,
                                    body,
                                };
                            }
                            continue;
                        }
                        Some((len, Some(_))) => len,
                    };
                    let mut byte = [0u8; 64];
                    let want = (need - table.len()).min(byte.len());
                    match Pin::new(&mut this.inner).poll_read(cx, &mut byte[..want]) {
                        Poll::Ready(Ok(0)) => {
                            // The peer closed between frames (or inside a table): hand on what
                            // there is and end; a partial table is the RPC system's to refuse.
                            if table.is_empty() {
                                return Poll::Ready(Ok(0));
                            }
                            let table = std::mem::take(table);
                            this.state = State::Passing {
                                table,
                                sent: 0,
                                body: 0,
                            };
                        }
                        Poll::Ready(Ok(n)) => table.extend_from_slice(&byte[..n]),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}
