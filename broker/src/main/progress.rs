//! Progress of a long export on stderr: a running count of the lines
//! written, redrawn in place when stderr is a terminal (nothing otherwise:
//! logs stay clean), and a closing summary printed by the caller.

use std::io::{IsTerminal as _, Write};

/// Redraw the count every this many lines.
const EVERY: u64 = 10_000;

/// Counts the lines written through it.
pub(crate) struct Lines<W> {
    inner: W,
    count: u64,
    terminal: bool,
}

impl<W: Write> Lines<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self { inner, count: 0, terminal: std::io::stderr().is_terminal() }
    }

    /// Lines written so far.
    pub(crate) fn lines(&self) -> u64 {
        self.count
    }
}

impl<W: Write> Write for Lines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let newlines = u64::try_from(buf[..n].iter().filter(|&&b| b == b'\n').count()).unwrap_or(0);
        let before = self.count;
        self.count += newlines;
        if self.terminal && self.count / EVERY > before / EVERY {
            eprint!("\r{} lines written…", self.count);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W> Drop for Lines<W> {
    fn drop(&mut self) {
        if self.terminal && self.count >= EVERY {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_across_partial_writes() {
        let mut lines = Lines::new(Vec::new());
        lines.write_all(b"a\nb").unwrap();
        lines.write_all(b"c\n\nd\n").unwrap();
        assert_eq!(lines.lines(), 4);
    }
}
