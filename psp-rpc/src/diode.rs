//! The diode guard: on a connection toward a Totebox, commands flow down only.
//!
//! Our side of such a connection exports nothing. capnp-rust on its own does not keep the diode
//! against a hostile peer, though: it answers a peer's `Bootstrap` with a broken capability, keeps
//! the connection after a peer's `Call`, and imports capabilities placed in any `Return`. So every
//! frame the Totebox sends passes this guard before capnp-rpc sees it, and the guard cuts the
//! connection (an I/O error), records why, and logs a security event when the Totebox:
//!
//! * sends a `Call`, `Bootstrap`, `Provide`, `Accept` or `Join` (or the obsolete `Save`/`Delete`);
//! * places a capability in a `Return` that does not answer our own `Bootstrap` or `open`
//!   question, or a capability that is not its own (one it claims we host, or a third party's);
//! * answers with `takeFromOtherQuestion`, `acceptFromThirdParty` or `resultsSentElsewhere`;
//! * resolves a promise to a new capability;
//! * sends a frame with too many segments or larger than the connection's message limit.
//!
//! The guard learns which questions are our `Bootstrap` and `open` calls by reading the frames
//! we send (the writer half), so it needs no help from capnp-rpc.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use capnp::message::ReaderOptions;
use capnp::traits::HasTypeId;
use capnp_rpc::rpc_capnp::{cap_descriptor, message, payload, resolve};
use futures::{AsyncRead, AsyncWrite};
use psp_core::PublicKey;

use crate::frame_limit::{FrameSize, frame_size};
use psp_schema::totebox_capnp::totebox;

/// Bytes of buffer a connection keeps between frames; a larger frame's buffer is freed once it
/// has been handed on.
const RETAINED_BUFFER: usize = 64 * 1024;

/// What the two halves of one guarded connection share.
#[derive(Debug)]
struct Shared {
    peer: PublicKey,
    max_bytes: usize,
    /// Our questions whose answers may carry the Totebox's capabilities.
    awaiting_capability: HashSet<u32>,
    violation: Option<String>,
}

/// A handle on the guard of one connection: whether (and why) it cut the connection.
#[derive(Debug, Clone)]
pub struct DiodeGuard {
    shared: Rc<RefCell<Shared>>,
}

impl DiodeGuard {
    /// A guard for a connection to `peer` accepting messages of at most `max_words` words.
    pub fn new(peer: PublicKey, max_words: usize) -> Self {
        Self {
            shared: Rc::new(RefCell::new(Shared {
                peer,
                max_bytes: max_words.saturating_mul(8),
                awaiting_capability: HashSet::new(),
                violation: None,
            })),
        }
    }

    /// Why the guard cut the connection, if it did.
    pub fn violation(&self) -> Option<String> {
        self.shared.borrow().violation.clone()
    }

    /// Wraps the connection's halves: frames from the Totebox are checked, frames to it are read
    /// to learn our questions.
    pub fn wrap<R, W>(&self, reader: R, writer: W) -> (GuardedReader<R>, GuardedWriter<W>) {
        (
            GuardedReader {
                inner: reader,
                shared: self.shared.clone(),
                buffer: Vec::new(),
                checked: 0,
                consumed: 0,
            },
            GuardedWriter {
                inner: writer,
                shared: self.shared.clone(),
                pending: Vec::new(),
            },
        )
    }
}

/// The length of the complete frame at the start of `bytes`, once it has fully arrived.
fn frame_len(bytes: &[u8], max_bytes: usize) -> Result<Option<usize>, String> {
    let (table, body) = match frame_size(bytes) {
        FrameSize::Unknown | FrameSize::Table { body: None, .. } => return Ok(None),
        FrameSize::TooManySegments(n) => return Err(format!("a frame with {n} segments")),
        FrameSize::Table {
            table,
            body: Some(body),
        } => (table, body),
    };
    let total = (table as u64).saturating_add(body);
    match usize::try_from(total) {
        Ok(total) if total <= max_bytes => Ok((bytes.len() >= total).then_some(total)),
        _ => Err(format!(
            "a frame of {total} bytes (the limit is {max_bytes})"
        )),
    }
}

/// Parses one frame and hands its RPC message to `inspect`: in place when the frame is 8-byte
/// aligned (the usual case: frames start at the front of the buffer), else from an aligned copy.
fn with_message<T>(
    frame: &[u8],
    inspect: impl FnOnce(message::Reader<'_>) -> Result<T, String>,
) -> Result<T, String> {
    let copy;
    let aligned = if frame.as_ptr().align_offset(8) == 0 {
        frame
    } else {
        let mut words = capnp::Word::allocate_zeroed_vec(frame.len() / 8);
        capnp::Word::words_to_bytes_mut(&mut words).copy_from_slice(frame);
        copy = words;
        capnp::Word::words_to_bytes(&copy)
    };
    let options = *ReaderOptions::new().traversal_limit_in_words(Some(frame.len() / 4 + 64));
    let mut slice = aligned;
    let reader = capnp::serialize::read_message_from_flat_slice(&mut slice, options)
        .map_err(|e| format!("an unreadable frame: {e}"))?;
    let root = reader
        .get_root::<message::Reader<'_>>()
        .map_err(|e| format!("an unreadable message: {e}"))?;
    inspect(root)
}

/// Whether the capabilities of a payload are all the Totebox's own.
fn own_capabilities_only(payload: payload::Reader<'_>) -> Result<usize, String> {
    let table = payload.get_cap_table().map_err(|e| e.to_string())?;
    for descriptor in table.iter() {
        match descriptor.which().map_err(|e| e.to_string())? {
            cap_descriptor::SenderHosted(_)
            | cap_descriptor::SenderPromise(_)
            | cap_descriptor::None(()) => {}
            _ => {
                return Err(
                    "a capability it does not host (one of ours, or a third party's)".into(),
                );
            }
        }
    }
    Ok(table.len() as usize)
}

impl Shared {
    /// Checks one message from the Totebox; `Err` names the violation.
    fn check_incoming(&mut self, msg: message::Reader<'_>) -> Result<(), String> {
        match msg
            .which()
            .map_err(|e| format!("an unknown message type ({e})"))?
        {
            message::Unimplemented(_)
            | message::Abort(_)
            | message::Finish(_)
            | message::Release(_)
            | message::Disembargo(_) => Ok(()),
            message::Call(_) => Err("a Call: a Totebox may not call upstream".into()),
            message::Bootstrap(_) => {
                Err("a Bootstrap: a Totebox may not ask for our capabilities".into())
            }
            message::Provide(_) | message::Accept(_) | message::Join(_) => {
                Err("a three-party handoff message".into())
            }
            message::ObsoleteSave(_) | message::ObsoleteDelete(_) => {
                Err("an obsolete persistence message".into())
            }
            message::Resolve(r) => match r
                .map_err(|e| e.to_string())?
                .which()
                .map_err(|e| e.to_string())?
            {
                resolve::Exception(_) => Ok(()),
                resolve::Cap(_) => Err("a Resolve to a new capability".into()),
            },
            message::Return(r) => {
                let r = r.map_err(|e| e.to_string())?;
                let answer = r.get_answer_id();
                let expected = self.awaiting_capability.remove(&answer);
                use capnp_rpc::rpc_capnp::return_;
                match r.which().map_err(|e| e.to_string())? {
                    return_::Results(payload) => {
                        let capabilities =
                            own_capabilities_only(payload.map_err(|e| e.to_string())?)?;
                        if capabilities > 0 && !expected {
                            return Err(format!(
                                "a capability in the answer to question {answer}, which was not our Bootstrap or open"
                            ));
                        }
                        Ok(())
                    }
                    return_::Exception(_) | return_::Canceled(()) => Ok(()),
                    _ => Err("a Return that redirects the answer elsewhere".into()),
                }
            }
        }
    }

    /// Notes our own questions that may be answered with a capability.
    fn note_outgoing(&mut self, msg: message::Reader<'_>) -> Result<(), String> {
        match msg.which() {
            Ok(message::Bootstrap(Ok(b))) => {
                self.awaiting_capability.insert(b.get_question_id());
            }
            Ok(message::Call(Ok(c)))
                if c.get_interface_id() == totebox::Client::TYPE_ID && c.get_method_id() == 1 =>
            {
                self.awaiting_capability.insert(c.get_question_id());
            }
            _ => {}
        }
        Ok(())
    }

    fn cut(&mut self, reason: String) -> io::Error {
        tracing::error!(target: "psp::security", peer = %self.peer, "diode: cut the connection to a Totebox that sent {reason}");
        self.violation.get_or_insert(reason.clone());
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("diode violation: the Totebox sent {reason}"),
        )
    }
}

/// The incoming half: passes on only frames that passed the check.
pub struct GuardedReader<R> {
    inner: R,
    shared: Rc<RefCell<Shared>>,
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` that are checked and may be handed on.
    checked: usize,
    /// Of those, how many were handed on already.
    consumed: usize,
}

impl<R: AsyncRead + Unpin> AsyncRead for GuardedReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if let Some(reason) = this.shared.borrow().violation.clone() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, reason)));
            }
            if this.consumed < this.checked {
                let n = out.len().min(this.checked - this.consumed);
                out[..n].copy_from_slice(&this.buffer[this.consumed..this.consumed + n]);
                this.consumed += n;
                return Poll::Ready(Ok(n));
            }
            // Everything checked was handed on: drop it, then check the next complete frame.
            this.buffer.drain(..this.consumed);
            this.checked = 0;
            this.consumed = 0;
            // A large frame passed: give its memory back rather than keep it for the life of
            // the connection (one per Totebox, so it would add up across the fleet).
            if this.buffer.capacity() > RETAINED_BUFFER && this.buffer.len() <= RETAINED_BUFFER {
                this.buffer.shrink_to(RETAINED_BUFFER);
            }
            let max_bytes = this.shared.borrow().max_bytes;
            match frame_len(&this.buffer, max_bytes) {
                Err(reason) => return Poll::Ready(Err(this.shared.borrow_mut().cut(reason))),
                Ok(Some(len)) => {
                    let verdict = {
                        let mut shared = this.shared.borrow_mut();
                        with_message(&this.buffer[..len], |m| shared.check_incoming(m))
                    };
                    if let Err(reason) = verdict {
                        return Poll::Ready(Err(this.shared.borrow_mut().cut(reason)));
                    }
                    this.checked = len;
                    continue;
                }
                Ok(None) => {}
            }
            let mut chunk = [0u8; 16 * 1024];
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(n)) => this.buffer.extend_from_slice(&chunk[..n]),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The outgoing half: passes everything through, reading our frames to learn our questions.
pub struct GuardedWriter<W> {
    inner: W,
    shared: Rc<RefCell<Shared>>,
    /// Bytes written that do not yet form a whole frame.
    pending: Vec<u8>,
}

impl<W> GuardedWriter<W> {
    fn learn(&mut self, written: &[u8]) {
        self.pending.extend_from_slice(written);
        // Our own frames: no size limit applies, and an unreadable one is not the peer's doing.
        while let Ok(Some(len)) = frame_len(&self.pending, usize::MAX) {
            let mut shared = self.shared.borrow_mut();
            let _ = with_message(&self.pending[..len], |m| shared.note_outgoing(m));
            drop(shared);
            self.pending.drain(..len);
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for GuardedWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                this.learn(&data[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
