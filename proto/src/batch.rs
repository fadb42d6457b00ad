//! Batches of received QUIC chunks on their way out again.
//!
//! quinn hands over each received STREAM frame as its own chunk (about one
//! packet, 1.4 KB), and passing them on one by one costs per chunk: a system
//! call each into a TCP socket, and in quinn's send buffer a walk over every
//! queued chunk for each packet it builds. A batch is a [`Buf`] holding one
//! read's chunks: tokio's `write_all_buf` sends it to a socket with vectored
//! writes, and [`Buf::copy_to_bytes`] makes it one chunk for another QUIC
//! stream. This module only does the bookkeeping; the caller does the IO.

use std::io::IoSlice;

use bytes::{Buf, BufMut as _, Bytes, BytesMut};

/// Chunks read from a stream at once: a receive batch's worth.
pub const CHUNKS: usize = 32;

/// The chunks of one read, written out front to back.
#[derive(Debug, Default)]
pub struct Batch {
    chunks: [Bytes; CHUNKS],
    /// The first chunk not yet written in full; never an empty one.
    next: usize,
    /// One past the last chunk filled by the read.
    end: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slots a read fills (`RecvStream::read_chunks`); call
    /// [`Batch::filled`] with the count it returned.
    pub fn slots(&mut self) -> &mut [Bytes] {
        &mut self.chunks
    }

    /// Marks the first `n` slots as read and not yet written.
    ///
    /// # Panics
    /// When `n` is more than [`CHUNKS`] (a read never returns more slots than it was given).
    pub fn filled(&mut self, n: usize) {
        assert!(n <= CHUNKS, "a read filled {n} of {CHUNKS} slots");
        self.next = 0;
        self.end = n;
        self.skip_written();
    }

    /// Moves past written chunks, letting go of them: an emptied `Bytes`
    /// still holds its share of quinn's receive buffer, which an idle
    /// tunnel would otherwise keep until its next read.
    fn skip_written(&mut self) {
        while self.next < self.end && self.chunks[self.next].is_empty() {
            self.chunks[self.next] = Bytes::new();
            self.next += 1;
        }
    }
}

impl Buf for Batch {
    fn remaining(&self) -> usize {
        self.chunks[self.next..self.end].iter().map(Bytes::len).sum()
    }

    fn chunk(&self) -> &[u8] {
        self.chunks[self.next..self.end].first().map_or(&[], |c| c)
    }

    /// Drops the first `written` bytes after a (possibly short) write;
    /// more than is left empties the batch.
    fn advance(&mut self, mut written: usize) {
        while written > 0 && self.next < self.end {
            let chunk = &mut self.chunks[self.next];
            let step = written.min(chunk.len());
            chunk.advance(step);
            written -= step;
            self.skip_written();
        }
    }

    /// The first `len` bytes as one chunk: no copy when they lie in one
    /// received chunk, a single copy otherwise.
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        if self.chunk().len() >= len {
            let out = self.chunks[self.next].split_to(len);
            self.skip_written();
            return out;
        }
        assert!(len <= self.remaining(), "asked for {len} bytes of a batch holding fewer");
        let mut out = BytesMut::with_capacity(len);
        out.put(self.take(len));
        out.freeze()
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let unwritten = self.chunks[self.next..self.end].iter().filter(|c| !c.is_empty());
        let mut n = 0;
        for (slot, chunk) in dst.iter_mut().zip(unwritten) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(chunks: &[&'static [u8]]) -> Batch {
        let mut batch = Batch::new();
        for (slot, chunk) in batch.slots().iter_mut().zip(chunks) {
            *slot = Bytes::from_static(chunk);
        }
        batch.filled(chunks.len());
        batch
    }

    fn io_slices(batch: &Batch) -> Vec<IoSlice<'_>> {
        let mut slices = [IoSlice::new(&[]); CHUNKS];
        let n = batch.chunks_vectored(&mut slices);
        slices[..n].to_vec()
    }

    fn unwritten(batch: &Batch) -> Vec<u8> {
        io_slices(batch).iter().flat_map(|s| s.to_vec()).collect()
    }

    #[test]
    fn short_writes_leave_exactly_the_bytes_not_yet_written_in_order() {
        let mut batch = batch_of(&[b"abc", b"", b"defg", b"h"]);
        assert_eq!(batch.remaining(), 8);
        batch.advance(2);
        assert_eq!(unwritten(&batch), b"cdefgh");
        batch.advance(1);
        assert_eq!(unwritten(&batch), b"defgh");
        assert_eq!(io_slices(&batch).len(), 2, "written and empty chunks are not offered again");
        batch.advance(4);
        assert_eq!(unwritten(&batch), b"h");
        assert!(batch.has_remaining());
        batch.advance(1);
        assert!(!batch.has_remaining());
        assert_eq!(batch.remaining(), 0);
    }

    #[test]
    fn a_new_read_replaces_what_the_last_one_left() {
        let mut batch = batch_of(&[b"old", b"stale"]);
        batch.advance(3);
        batch.slots()[0] = Bytes::from_static(b"new");
        batch.filled(1);
        assert_eq!(unwritten(&batch), b"new");
        batch.filled(0);
        assert!(!batch.has_remaining());
        assert!(io_slices(&batch).is_empty());
    }

    #[test]
    fn a_lone_chunk_passes_without_a_copy_and_several_become_one_in_order() {
        let lone = Bytes::from(vec![7u8; 1400]);
        let at = lone.as_ptr();
        let mut one = Batch::new();
        one.slots()[0] = lone;
        one.filled(1);
        let passed = one.copy_to_bytes(one.remaining());
        assert_eq!(passed.as_ptr(), at, "a single chunk is handed on, not copied");
        assert!(!one.has_remaining());

        let mut many = batch_of(&[b"GET /v1/", b"", b"models"]);
        assert_eq!(many.copy_to_bytes(many.remaining()), Bytes::from_static(b"GET /v1/models"));
        assert!(!many.has_remaining(), "the batch is left empty for the next read");
    }

    #[test]
    fn written_chunks_are_let_go_of_at_once() {
        let received = Bytes::from(vec![1u8; 64]);
        let mut batch = Batch::new();
        batch.slots()[0] = received.slice(..32);
        batch.slots()[1] = received.slice(32..);
        batch.filled(2);
        batch.advance(40);
        let rest = batch.copy_to_bytes(batch.remaining());
        drop(rest);
        assert!(received.is_unique(), "the batch holds no share of the received buffer once written");
    }

    #[test]
    fn advancing_past_the_end_is_harmless() {
        let mut batch = batch_of(&[b"ab"]);
        batch.advance(10);
        assert!(!batch.has_remaining());
    }
}
