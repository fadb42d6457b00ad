//! Batches of received QUIC chunks on their way into a TCP socket.
//!
//! quinn hands over each received STREAM frame as its own chunk (about one
//! packet, 1.4 KB). Writing them one by one costs a system call each; a
//! batch goes out in one vectored write. This module only does the
//! bookkeeping (which slices to write, what is left after a short write);
//! the caller does the IO.

use std::io::IoSlice;

use bytes::{Buf as _, Bytes};

/// Chunks read from a stream at once: a receive batch's worth.
pub const CHUNKS: usize = 32;

/// The chunks of one read, written out front to back.
#[derive(Debug, Default)]
pub struct Batch {
    chunks: [Bytes; CHUNKS],
    /// The first chunk not yet written in full.
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
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        self.chunks[self.next..self.end].iter().map(Bytes::len).sum()
    }

    /// Whether everything read has been written.
    pub fn is_empty(&self) -> bool {
        self.next == self.end
    }

    /// The unwritten bytes as slices for one vectored write.
    pub fn io_slices(&self) -> Slices<'_> {
        let mut slices = Slices { slices: [IoSlice::new(&[]); CHUNKS], len: 0 };
        for chunk in &self.chunks[self.next..self.end] {
            slices.slices[slices.len] = IoSlice::new(chunk);
            slices.len += 1;
        }
        slices
    }

    /// Drops the first `written` bytes after a (possibly short) write.
    pub fn advance(&mut self, mut written: usize) {
        while written > 0 && self.next < self.end {
            let chunk = &mut self.chunks[self.next];
            let step = written.min(chunk.len());
            chunk.advance(step);
            written -= step;
            if chunk.is_empty() {
                self.next += 1;
            }
        }
        while self.next < self.end && self.chunks[self.next].is_empty() {
            self.next += 1;
        }
    }
}

/// The slices of one vectored write, without an allocation.
#[derive(Debug)]
pub struct Slices<'a> {
    slices: [IoSlice<'a>; CHUNKS],
    len: usize,
}

impl<'a> std::ops::Deref for Slices<'a> {
    type Target = [IoSlice<'a>];

    fn deref(&self) -> &Self::Target {
        &self.slices[..self.len]
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

    fn unwritten(batch: &Batch) -> Vec<u8> {
        batch.io_slices().iter().flat_map(|s| s.to_vec()).collect()
    }

    #[test]
    fn short_writes_leave_exactly_the_bytes_not_yet_written_in_order() {
        let mut batch = batch_of(&[b"abc", b"", b"defg", b"h"]);
        assert_eq!(batch.remaining(), 8);
        batch.advance(2);
        assert_eq!(unwritten(&batch), b"cdefgh");
        batch.advance(1);
        assert_eq!(unwritten(&batch), b"defgh");
        assert_eq!(batch.io_slices().len(), 2, "written and empty chunks are not offered again");
        batch.advance(4);
        assert_eq!(unwritten(&batch), b"h");
        assert!(!batch.is_empty());
        batch.advance(1);
        assert!(batch.is_empty());
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
        assert!(batch.is_empty());
        assert!(batch.io_slices().is_empty());
    }

    #[test]
    fn advancing_past_the_end_is_harmless() {
        let mut batch = batch_of(&[b"ab"]);
        batch.advance(10);
        assert!(batch.is_empty());
    }
}
