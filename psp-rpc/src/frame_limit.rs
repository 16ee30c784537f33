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
//!
//! Since it sees every frame's boundaries, it also tells the connection's [`Activity`] when
//! bytes arrive and when a message begins and ends (for the idle and message time limits).

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use futures::AsyncRead;

use crate::activity::Activity;
use crate::peer_count::{PeerBudget, UNBUDGETED_BYTES};

/// Most bytes of an oversized frame read and dropped so the peer can read the refusal; a frame
/// declaring more than this fails at once.
pub const MAX_DRAINED: u64 = 256 << 20;

/// Most segments a frame may declare (no PSP peer needs more; capnp's own writer uses a few).
pub(crate) const MAX_SEGMENTS: u64 = 512;

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
    activity: Rc<Activity>,
    /// The peer's budget for unfinished messages, and how much of it the frame being passed
    /// holds (given back when the frame has passed whole, or when the reader goes).
    budget: Option<(PeerBudget, u64)>,
}

impl<R> FrameLimit<R> {
    /// Reads `inner`, refusing frames over `max_words` words, and marking what arrives in
    /// `activity`.
    pub fn new(inner: R, max_words: usize, activity: Rc<Activity>) -> Self {
        Self {
            inner,
            max_bytes: (max_words as u64).saturating_mul(8),
            state: State::Table(Vec::new()),
            activity,
            budget: None,
        }
    }

    /// Reads a frame larger than [`UNBUDGETED_BYTES`] only when `budget` has room for it.
    pub(crate) fn with_budget(mut self, budget: PeerBudget) -> Self {
        self.budget = Some((budget, 0));
        self
    }

    /// Gives back what the frame just passed held of the peer's budget.
    fn give_back(&mut self) {
        if let Some((budget, held)) = &mut self.budget
            && *held > 0
        {
            budget.give_back(std::mem::take(held));
        }
    }
}

impl<R> Drop for FrameLimit<R> {
    fn drop(&mut self) {
        // A connection closed mid-message: its unread rest holds nothing any more, and a
        // reader that was waiting for room waits no more.
        self.give_back();
        if let Some((budget, _)) = &self.budget {
            budget.stop_waiting();
        }
    }
}

/// What the start of a Cap'n Proto frame says about the frame's size, as far as it has arrived.
/// The one reading of the segment table that this reader and the diode guard share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameSize {
    /// Fewer than 4 bytes: the segment count is not known yet.
    Unknown,
    /// More segments than [`MAX_SEGMENTS`] (how many).
    TooManySegments(u64),
    /// The segment table is `table` bytes; the body is `body` bytes once the whole table is in.
    Table {
        /// The table's length in bytes, padding included.
        table: usize,
        /// The body's length in bytes, once the table is whole.
        body: Option<u64>,
    },
}

/// Reads the segment table at the start of `bytes`.
pub(crate) fn frame_size(bytes: &[u8]) -> FrameSize {
    let Some(first) = bytes.first_chunk::<4>() else {
        return FrameSize::Unknown;
    };
    let segments = u64::from(u32::from_le_bytes(*first)) + 1;
    if segments > MAX_SEGMENTS {
        return FrameSize::TooManySegments(segments);
    }
    // At most 512 segments here, so these sizes are small.
    let sizes = 4 * segments as usize;
    let body = bytes.get(4..4 + sizes).map(|sizes| {
        sizes
            .chunks_exact(4)
            .map(|s| u64::from(u32::from_le_bytes(s.try_into().expect("4 bytes"))) * 8)
            .sum()
    });
    FrameSize::Table {
        table: (4 + sizes).next_multiple_of(8),
        body,
    }
}

/// The state after refusing a frame of `size`: drain its `body` so the peer can read the
/// refusal, or fail at once when the body is unknown or too large to drain.
fn refuse(size: String, body: Option<u64>, max_bytes: u64) -> State {
    let refusal = format!(
        "limit.message: a message of {size}; this server reads messages of at most {max_bytes} bytes"
    );
    tracing::warn!("refused an oversized message: {refusal}");
    match body {
        Some(left) if left <= MAX_DRAINED => State::Draining { left, refusal },
        _ => State::Failed(refusal),
    }
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
        if this.activity.aborted() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection was closed by this side",
            )));
        }
        let read = this.poll_frames(cx, out);
        if read.is_pending() {
            this.activity.wait(cx.waker());
        }
        read
    }
}

impl<R: AsyncRead + Unpin> FrameLimit<R> {
    fn poll_frames(&mut self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self;
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
                        this.activity.message_done();
                        this.give_back();
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
                    this.activity.received(n, false);
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
                        Poll::Ready(Ok(n)) => {
                            this.activity.received(n, false);
                            *left -= n as u64;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Table(table) => {
                    let (table_len, body) = match frame_size(table) {
                        FrameSize::Unknown => (4, None),
                        FrameSize::TooManySegments(n) => {
                            this.state = refuse(format!("{n} segments"), None, this.max_bytes);
                            continue;
                        }
                        FrameSize::Table { table, body } => (table, body),
                    };
                    if let Some(body) = body
                        && table.len() >= table_len
                    {
                        let total = (table_len as u64).saturating_add(body);
                        if total <= this.max_bytes
                            && total > UNBUDGETED_BYTES
                            && let Some((budget, held)) = &mut this.budget
                        {
                            // Held back, table and all, until the peer's other unfinished
                            // messages leave room: Cap'n Proto allocates the whole message
                            // when it reads the table.
                            ready!(budget.poll_take(total, cx));
                            *held = total;
                        }
                        this.state = if total > this.max_bytes {
                            refuse(format!("{total} bytes"), Some(body), this.max_bytes)
                        } else {
                            State::Passing {
                                table: std::mem::take(table),
                                sent: 0,
                                body,
                            }
                        };
                        continue;
                    }
                    let need = table_len;
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
                        Poll::Ready(Ok(n)) => {
                            this.activity.received(n, table.is_empty());
                            table.extend_from_slice(&byte[..n]);
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}
