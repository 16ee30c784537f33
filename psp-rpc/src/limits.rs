//! Limits on what a peer may send, and the errors PSP calls fail with.

use std::time::Duration;

use capnp::message::ReaderOptions;

/// Limits of one PSP connection. The defaults are chosen, not inherited:
///
/// * `max_message_words`: the largest message read, in 8-byte words. Cap'n Proto's traversal
///   limit also bounds a message's size, so one number covers both. A Totebox receives queries
///   and command batches (default 2 Mi words = 16 MiB); an aggregator receives results (its
///   own setting, usually larger).
/// * `nesting_limit`: how deep structs may nest (default 64). Filters are also limited by the
///   query engine (32 levels), so this only stops pathological messages early.
/// * `max_calls_in_flight`: calls one connection may have running at once (default 64); more
///   are refused with `limit.calls-in-flight` rather than queued without bound.
/// * `handshake_timeout`: TLS handshake plus the confirming round trip (default 5 s).
/// * `call_timeout`: how long a client waits for any one call (default 30 s).
/// * `idle_timeout`: a server closes a connection with no call running and nothing received
///   for this long (default 5 min): a peer that vanished without closing (a partition, a lost
///   host, a half-open link) must not hold a file descriptor and buffers forever. A client
///   that finds its connection closed dials again.
/// * `message_timeout`: a server closes a connection whose message, once begun, has not
///   arrived whole within this (default 60 s: 16 MiB at about 2 Mbit/s), so a peer cannot
///   hold a connection by trickling bytes.
/// * `max_connections_per_peer`: connections one peer key may have open at a server at once
///   (default 64); more are closed at once, and the server logs it.
/// * `max_partial_bytes_per_peer`: bytes of messages one peer key may have begun and not
///   finished at a server at once, over all its connections (default 32 MiB, two whole messages
///   at the default message limit). A message over 64 KiB that would pass it waits, unread,
///   until the peer's other messages finish; a message is never held back when the peer has
///   nothing else unfinished. Without it, one peer could hold its connection cap times the
///   message limit (1 GiB by default) by trickling. A message waiting for room is a message
///   begun, so its wait counts against `message_timeout`: a peer whose own large messages
///   hold the budget for that long loses the connection of the one that waits, never another
///   peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted, in words.
    pub max_message_words: usize,
    /// Deepest struct nesting accepted.
    pub nesting_limit: i32,
    /// Calls one connection may have running.
    pub max_calls_in_flight: usize,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Per-call deadline on the client side.
    pub call_timeout: Duration,
    /// How long a server keeps a connection with no call running and nothing received.
    pub idle_timeout: Duration,
    /// How long a server waits for a message begun to arrive whole.
    pub message_timeout: Duration,
    /// Connections one peer key may have open at a server.
    pub max_connections_per_peer: usize,
    /// Bytes of unfinished messages one peer key may have at a server, over all its
    /// connections.
    pub max_partial_bytes_per_peer: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_words: 2 << 20,
            nesting_limit: 64,
            max_calls_in_flight: 64,
            handshake_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            message_timeout: Duration::from_secs(60),
            max_connections_per_peer: 64,
            max_partial_bytes_per_peer: 32 << 20,
        }
    }
}

impl Limits {
    /// The reader options that enforce these limits on incoming messages.
    pub fn reader_options(&self) -> ReaderOptions {
        *ReaderOptions::new()
            .traversal_limit_in_words(Some(self.max_message_words))
            .nesting_limit(self.nesting_limit)
    }
}

/// The code of a server that failed (a disk write, a task that died): the one documented code
/// with no family before a dot.
const INTERNAL: &str = "internal";

/// A PSP call that failed: the stable code (`capability.expired`, `policy.aggregate-only`,
/// `limit.rows`, ...) and the human message, as carried in the Cap'n Proto exception.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CallError {
    /// The stable code; `transport.*` for failures below PSP (timeouts, disconnects).
    pub code: String,
    /// What happened.
    pub message: String,
}

impl CallError {
    /// A failure with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The exception a server sends for this error.
    pub fn to_capnp(&self) -> capnp::Error {
        if self.code.starts_with("limit.") {
            capnp::Error::overloaded(self.to_string())
        } else {
            capnp::Error::failed(self.to_string())
        }
    }

    /// Reads an exception received from a peer: `code: message` when the peer speaks PSP,
    /// otherwise a `transport.*` code from the exception's kind.
    pub fn from_capnp(error: &capnp::Error) -> Self {
        let text = error.extra.trim_start_matches("remote exception: ");
        if let Some((code, message)) = text.split_once(": ")
            && !code.is_empty()
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'-')
            && (code.contains('.') || code == INTERNAL)
        {
            return Self::new(code, message);
        }
        let code = match error.kind {
            // A peer that dies (or closes without TLS's close_notify) ends the stream early:
            // for the caller that is a lost connection, like a reset.
            capnp::ErrorKind::Disconnected | capnp::ErrorKind::PrematureEndOfFile => {
                "transport.disconnected"
            }
            capnp::ErrorKind::Overloaded => "transport.overloaded",
            capnp::ErrorKind::Unimplemented => "transport.unimplemented",
            _ => "transport.failed",
        };
        Self::new(code, text)
    }

    /// A call that did not finish before its deadline.
    pub fn timed_out(what: &str, after: Duration) -> Self {
        Self::new(
            "transport.timeout",
            format!("{what} did not answer within {after:?}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::CallError;

    fn read(kind: capnp::ErrorKind, text: &str) -> CallError {
        CallError::from_capnp(&capnp::Error {
            kind,
            extra: text.to_owned(),
        })
    }

    #[test]
    fn a_psp_code_is_read_from_the_exception_text() {
        let e = read(
            capnp::ErrorKind::Failed,
            "remote exception: capability.expired: ended at 12",
        );
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("capability.expired", "ended at 12")
        );
    }

    /// Exceptions that do not carry a PSP code (the peer is not PSP, or the transport failed)
    /// get a `transport.*` code from their kind, never an empty one.
    #[test]
    fn other_exceptions_get_a_transport_code_from_their_kind() {
        use capnp::ErrorKind::*;
        for (kind, code) in [
            (Disconnected, "transport.disconnected"),
            (PrematureEndOfFile, "transport.disconnected"),
            (Overloaded, "transport.overloaded"),
            (Unimplemented, "transport.unimplemented"),
            (Failed, "transport.failed"),
        ] {
            assert_eq!(
                read(kind, "Connection reset by peer").code,
                code,
                "{kind:?}"
            );
        }
        // Text that merely looks like a code (no family, capitals) is not taken for one.
        assert_eq!(read(Failed, "Error: nope").code, "transport.failed");
        assert_eq!(read(Failed, "nodot: message").code, "transport.failed");
    }

    /// `internal`, the one documented code without a family (a server that failed, such as a
    /// disk write), is the peer's word too, not a transport failure.
    #[test]
    fn a_peer_that_failed_is_read_as_internal() {
        let read = read(capnp::ErrorKind::Failed, "internal: the disk write failed");
        assert_eq!(read.code, "internal");
        assert_eq!(read.message, "the disk write failed");
    }
}
