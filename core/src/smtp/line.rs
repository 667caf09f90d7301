//! Command-line framing: the connection driver pushes the bytes it reads,
//! and takes back complete command lines for `command::parse_command`.
//! When DATA starts (or after STARTTLS) the driver takes the unconsumed
//! bytes with `take_remaining`.
//!
//! A line ends at CRLF; a bare LF is accepted too (as Postfix does for
//! commands; the DATA receiver is the strict one). A line longer than the
//! limit is reported once as [`Line::TooLong`] and its remainder skipped
//! up to the next line end, so memory stays bounded and the session
//! usable.

/// The result of [`LineBuffer::next_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line, without its CRLF or LF.
    Complete(&'a [u8]),
    /// A line over the limit; its bytes are discarded.
    TooLong,
}

/// Accumulates socket input and cuts it into lines.
#[derive(Debug)]
pub struct LineBuffer {
    /// Received bytes; `buf[start..]` is not consumed yet.
    buf: Vec<u8>,
    /// First unconsumed byte.
    start: usize,
    /// Where to resume the search for LF (everything in `start..scan` was
    /// already searched), so byte-by-byte input is not rescanned.
    scan: usize,
    /// Longest line including CRLF.
    max: usize,
    /// Inside an overlong line already reported: drop bytes up to the next LF.
    skipping: bool,
}

impl LineBuffer {
    /// `max` is the longest line including CRLF: 512 for commands
    /// (RFC 5321 §4.5.3.1.4). Values under 3 are raised to 3 (one octet
    /// plus CRLF).
    pub fn new(max: usize) -> Self {
        LineBuffer {
            buf: Vec::with_capacity(max.max(3)),
            start: 0,
            scan: 0,
            max: max.max(3),
            skipping: false,
        }
    }

    /// Appends bytes read from the client.
    pub fn push(&mut self, data: &[u8]) {
        // Drop consumed bytes first so the buffer holds at most one partial
        // line (at most `max` octets) plus what was just read.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next line, or `None` when more input is needed.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        if self.skipping {
            match self.find_lf() {
                Some(lf) => {
                    self.start = lf + 1;
                    self.scan = self.start;
                    self.skipping = false;
                }
                None => {
                    self.discard_all();
                    return None;
                }
            }
        }
        match self.find_lf() {
            Some(lf) => {
                let begin = self.start;
                self.start = lf + 1;
                self.scan = self.start;
                let mut line = &self.buf[begin..lf];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                // Measured with a two-octet ending whatever the client sent.
                if line.len() + 2 > self.max {
                    Some(Line::TooLong)
                } else {
                    Some(Line::Complete(line))
                }
            }
            None => {
                self.scan = self.buf.len();
                // `n` pending octets without LF: the line will have at least
                // n - 1 content octets (the last may be the CR of a CRLF), so
                // n >= max already exceeds the limit.
                if self.buf.len() - self.start >= self.max {
                    self.discard_all();
                    self.skipping = true;
                    Some(Line::TooLong)
                } else {
                    None
                }
            }
        }
    }

    /// Takes every unconsumed byte: the start of the message after DATA, or
    /// pipelined bytes to drop after STARTTLS (RFC 3207 §4.2). Resets the
    /// buffer.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        self.scan = 0;
        self.skipping = false;
        rest
    }

    /// True if unconsumed bytes are waiting: the client sent more than one
    /// command without waiting for the reply (pipelining detection).
    pub fn has_pending(&self) -> bool {
        self.start < self.buf.len()
    }

    fn find_lf(&self) -> Option<usize> {
        self.buf[self.scan..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| self.scan + i)
    }

    fn discard_all(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scan = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drains every available line as owned values (None for TooLong).
    fn drain(buf: &mut LineBuffer) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(line) = buf.next_line() {
            out.push(match line {
                Line::Complete(l) => Some(l.to_vec()),
                Line::TooLong => None,
            });
        }
        out
    }

    fn lines(items: &[&str]) -> Vec<Option<Vec<u8>>> {
        items
            .iter()
            .map(|s| {
                if *s == "<too long>" {
                    None
                } else {
                    Some(s.as_bytes().to_vec())
                }
            })
            .collect()
    }

    #[test]
    fn crlf_and_bare_lf() {
        let mut b = LineBuffer::new(512);
        b.push(b"EHLO a\r\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\r\nDA");
        assert_eq!(
            drain(&mut b),
            lines(&["EHLO a", "MAIL FROM:<a@b>", "RCPT TO:<c@d>"])
        );
        assert!(b.has_pending());
        b.push(b"TA\r\n");
        assert_eq!(drain(&mut b), lines(&["DATA"]));
        assert!(!b.has_pending());
    }

    #[test]
    fn bare_cr_does_not_end_a_line() {
        let mut b = LineBuffer::new(512);
        b.push(b"NOOP\rQUIT\r\r\n");
        assert_eq!(drain(&mut b), lines(&["NOOP\rQUIT\r"]));
    }

    #[test]
    fn empty_lines() {
        let mut b = LineBuffer::new(512);
        b.push(b"\r\n\n");
        assert_eq!(drain(&mut b), lines(&["", ""]));
    }

    #[test]
    fn split_at_every_byte() {
        let input = b"EHLO x\r\nNOOP\nQUIT\r\n";
        let mut b = LineBuffer::new(512);
        let mut got = Vec::new();
        for &byte in input.iter() {
            b.push(&[byte]);
            got.extend(drain(&mut b));
        }
        assert_eq!(got, lines(&["EHLO x", "NOOP", "QUIT"]));
    }

    #[test]
    fn limit_is_inclusive_of_crlf() {
        let mut b = LineBuffer::new(10);
        b.push(b"12345678\r\n123456789\r\n12345678\n");
        assert_eq!(
            drain(&mut b),
            lines(&["12345678", "<too long>", "12345678"])
        );
    }

    #[test]
    fn overlong_line_reported_once_then_skipped() {
        let mut b = LineBuffer::new(16);
        b.push(b"NOOP\r\n");
        b.push(&[b'x'; 40]);
        assert_eq!(drain(&mut b), lines(&["NOOP", "<too long>"]));
        // The rest of that line is dropped as it arrives, without buffering.
        for _ in 0..1000 {
            b.push(&[b'y'; 100]);
            assert_eq!(drain(&mut b), lines(&[]));
            assert!(b.buf.len() <= 100);
        }
        b.push(b"yyy\r\nQUIT\r\n");
        assert_eq!(drain(&mut b), lines(&["QUIT"]));
    }

    #[test]
    fn overlong_detected_without_line_end() {
        let mut b = LineBuffer::new(8);
        b.push(b"1234567");
        assert_eq!(drain(&mut b), lines(&[]));
        b.push(b"\r");
        // 7 octets + CR: with LF this would be 7 + 2 = 9 > 8.
        assert_eq!(drain(&mut b), lines(&["<too long>"]));
        b.push(b"\nNOOP\r\n");
        assert_eq!(drain(&mut b), lines(&["NOOP"]));

        let mut b = LineBuffer::new(8);
        b.push(b"123456\r");
        assert_eq!(drain(&mut b), lines(&[]));
        b.push(b"\n");
        assert_eq!(drain(&mut b), lines(&["123456"]));
    }

    #[test]
    fn overlong_line_split_byte_by_byte() {
        let mut input = b"NOOP\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'z', 600));
        input.extend_from_slice(b"\r\nQUIT\r\n");
        let mut whole = LineBuffer::new(512);
        whole.push(&input);
        let expected = drain(&mut whole);
        assert_eq!(expected, lines(&["NOOP", "<too long>", "QUIT"]));
        let mut b = LineBuffer::new(512);
        let mut got = Vec::new();
        for &byte in &input {
            b.push(&[byte]);
            got.extend(drain(&mut b));
            assert!(b.buf.len() <= 512);
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn take_remaining_returns_unconsumed_bytes() {
        // The session stops calling next_line at DATA and takes the rest.
        let mut b = LineBuffer::new(512);
        b.push(b"DATA\r\nSubject: x\r\n.\r\n");
        assert_eq!(b.next_line(), Some(Line::Complete(b"DATA")));
        assert!(b.has_pending());
        assert_eq!(b.take_remaining(), b"Subject: x\r\n.\r\n".to_vec());
        assert!(!b.has_pending());
        assert_eq!(b.next_line(), None);
        assert_eq!(b.take_remaining(), Vec::<u8>::new());
        b.push(b"QUIT\r\n");
        assert_eq!(b.next_line(), Some(Line::Complete(b"QUIT")));
    }

    #[test]
    fn take_remaining_after_starttls_discards_injection() {
        let mut b = LineBuffer::new(512);
        b.push(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n");
        assert_eq!(b.next_line(), Some(Line::Complete(b"STARTTLS")));
        assert_eq!(b.take_remaining(), b"MAIL FROM:<evil@x>\r\n".to_vec());
        assert_eq!(b.next_line(), None);
    }

    #[test]
    fn tiny_limits_are_raised() {
        let mut b = LineBuffer::new(0);
        b.push(b"a\r\nab\r\n");
        assert_eq!(drain(&mut b), lines(&["a", "<too long>"]));
    }
}
