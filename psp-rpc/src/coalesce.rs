//! One message, one record, one system call.
//!
//! capnp writes a message as its segment table and then each segment, one `write` apiece, and
//! flushes after the message. TLS (tokio-rustls) seals and sends each write as a record of its
//! own, so the commonest message, one segment, left as two records in two `writev`s, and its
//! reader woke for two. A profile of a 1,000-Totebox fan-out counted 2.0 `writev` per Totebox
//! per query on the orchestrator's side for a single call. [`Coalesce`] gathers a message's
//! writes until capnp flushes, so the message leaves whole.
//!
//! Not `BufWriter`: that holds its whole capacity for the life of the connection, and an
//! orchestrator keeps thousands of quiet connections. This buffer exists only while a message is
//! being written and is given back once it is sent; a write too large to be worth copying goes
//! straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::io::AsyncWrite;

/// Largest run of bytes gathered before it is sent: a write that would take the buffer past it
/// sends what is held first, and a write this large on its own is not copied at all.
const GATHER_BYTES: usize = 64 * 1024;

/// An `AsyncWrite` that sends what it is given at each flush, in as few writes as the inner
/// writer takes.
pub struct Coalesce<W> {
    inner: W,
    held: Vec<u8>,
    /// How much of `held` the inner writer has taken.
    sent: usize,
}

impl<W> Coalesce<W> {
    /// Gathers the writes to `inner` until each flush.
    pub fn new(inner: W) -> Coalesce<W> {
        Coalesce {
            inner,
            held: Vec::new(),
            sent: 0,
        }
    }
}

impl<W: AsyncWrite + Unpin> Coalesce<W> {
    /// Hands everything held to the inner writer (without flushing it).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // Given back, not kept: a quiet connection should hold no buffer.
        self.held = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Coalesce<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.held.is_empty() && this.held.len() + data.len() > GATHER_BYTES {
            ready!(this.poll_send(cx))?;
        }
        if this.held.is_empty() && data.len() >= GATHER_BYTES {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.held.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::AsyncWriteExt;

    /// Records each write it is given; accepts at most `take` bytes a write.
    struct Writes {
        seen: Vec<Vec<u8>>,
        flushes: usize,
        take: usize,
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = data.len().min(this.take);
            this.seen.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn writes(take: usize) -> Coalesce<Writes> {
        Coalesce::new(Writes {
            seen: Vec::new(),
            flushes: 0,
            take,
        })
    }

    #[test]
    fn a_message_written_in_pieces_leaves_in_one_write_at_the_flush() {
        futures::executor::block_on(async {
            let mut out = writes(usize::MAX);
            out.write_all(&[0, 0, 0, 0, 2, 0, 0, 0]).await.unwrap();
            out.write_all(&[7; 16]).await.unwrap();
            assert!(
                out.inner.seen.is_empty(),
                "nothing is sent before the flush"
            );
            out.flush().await.unwrap();
            assert_eq!(out.inner.seen.len(), 1);
            assert_eq!(out.inner.seen[0].len(), 24);
            assert_eq!(out.inner.flushes, 1);
            assert_eq!(
                out.held.capacity(),
                0,
                "a sent message's buffer is given back"
            );
        });
    }

    #[test]
    fn a_short_writing_inner_writer_still_gets_every_byte_in_order() {
        futures::executor::block_on(async {
            let mut out = writes(5);
            let message: Vec<u8> = (0..=255u8).collect();
            out.write_all(&message[..10]).await.unwrap();
            out.write_all(&message[10..]).await.unwrap();
            out.flush().await.unwrap();
            assert_eq!(out.inner.seen.concat(), message);
        });
    }

    #[test]
    fn a_large_write_goes_straight_through_after_what_is_held() {
        futures::executor::block_on(async {
            let mut out = writes(usize::MAX);
            out.write_all(b"table").await.unwrap();
            let segment = vec![1u8; GATHER_BYTES];
            out.write_all(&segment).await.unwrap();
            assert_eq!(
                out.inner.seen.len(),
                2,
                "held bytes first, then the segment uncopied"
            );
            assert_eq!(out.inner.seen[0], b"table");
            assert_eq!(out.inner.seen[1].len(), GATHER_BYTES);
            out.write_all(b"tail").await.unwrap();
            out.close().await.unwrap();
            assert_eq!(out.inner.seen[2], b"tail", "close sends what is held");
        });
    }

    /// Takes at most `take` bytes a write and is not ready every other time it is asked.
    struct Reluctant {
        seen: Vec<u8>,
        writes: usize,
        refused: usize,
        take: usize,
        ready: bool,
    }

    impl Reluctant {
        fn poll<T>(&mut self, cx: &mut Context<'_>, then: impl FnOnce(&mut Self) -> T) -> Poll<T> {
            self.ready = !self.ready;
            if self.ready {
                Poll::Ready(then(self))
            } else {
                self.refused += 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    impl AsyncWrite for Reluctant {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().poll(cx, |this| {
                let n = data.len().min(this.take);
                this.seen.extend_from_slice(&data[..n]);
                this.writes += 1;
                Ok(n)
            })
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().poll(cx, |_| Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().poll(cx, |_| Ok(()))
        }
    }

    #[test]
    fn a_writer_often_not_ready_still_gets_every_byte_in_order() {
        futures::executor::block_on(async {
            let mut out = Coalesce::new(Reluctant {
                seen: Vec::new(),
                writes: 0,
                refused: 0,
                take: 1000,
                ready: false,
            });
            let mut expected = Vec::new();
            // Small pieces held and flushed, pieces that overflow what may be held (so a write
            // waits on sending what is held), and pieces large enough to go straight through.
            for (i, size) in [8, 300, GATHER_BYTES - 100, 500, GATHER_BYTES + 7, 3, 20_000]
                .into_iter()
                .enumerate()
            {
                let piece: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
                out.write_all(&piece).await.unwrap();
                expected.extend_from_slice(&piece);
                if i % 3 == 2 {
                    out.flush().await.unwrap();
                }
            }
            out.close().await.unwrap();
            assert_eq!(out.inner.seen, expected);
            assert!(out.inner.refused > 0 && out.inner.writes > 1);
            assert_eq!(out.held.capacity(), 0);
        });
    }
}
