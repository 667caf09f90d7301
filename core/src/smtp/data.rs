//! The DATA phase: message bytes from the client in, the unstuffed message
//! out for the pipeline's data stage and the spool. Also `dot_stuff`, its
//! inverse, for the SMTP client that relays mail to the next hop.
//!
//! This is where sluice defends against SMTP smuggling: only
//! `<CRLF>.<CRLF>` ends the message (RFC 5321 §4.1.1.4). `<LF>.<LF>`,
//! `<LF>.<CRLF>`, `<CR>.<CR>`, `<CRLF>.<LF>`, `<CR>.<LF>` and every other
//! variant are message content. Bare LF is normalized to CRLF (like
//! Postfix's `smtpd_forbid_bare_newline = normalize`), so a hidden
//! `<LF>.<CRLF>` can never reach a next hop as a bare-LF dot line: it is
//! stored as `<CRLF>.<CRLF>` content and dot-stuffed when relayed.
//!
//! The unstuffed message comes out as it is received: the caller takes it
//! with [`DataReceiver::take_output`] after each feed (the session writes it
//! to the spool), so memory stays at one input's worth; a caller that never
//! takes it gets the whole message from `finish`. Past `max_size` the
//! receiver keeps consuming up to the end of data without output, then
//! reports the error, so the session stays in sync.

use super::reply::Reply;

/// Limits applied while receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLimits {
    /// Largest message kept, in octets after unstuffing and normalization.
    pub max_size: u64,
    /// Longest line including CRLF: 1000 per RFC 5321 §4.5.3.1.6.
    pub max_line: usize,
}

/// What [`DataReceiver::feed`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProgress {
    /// No end-of-data yet: read more and feed again.
    NeedMore,
    /// End-of-data seen; `consumed` octets of this input were message (and
    /// terminator), the rest belongs to the next command.
    Done { consumed: usize },
}

/// Why a received message is refused; known only once end-of-data was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// More than `max_size` octets (552 5.3.4).
    #[error("message exceeds the size limit")]
    TooBig,
    /// A line over `max_line` octets (500 5.6.0).
    #[error("message line exceeds the length limit")]
    LineTooLong,
    /// `finish` was called before end-of-data: a bug in the caller, answered
    /// with a temporary error so the client retries.
    #[error("end of data not reached")]
    Incomplete,
}

impl DataError {
    /// The reply the client gets.
    pub fn reply(&self) -> Reply {
        match self {
            DataError::TooBig => Reply::message_too_big(),
            DataError::LineTooLong => Reply::data_line_too_long(),
            DataError::Incomplete => Reply::local_error(),
        }
    }
}

/// Where the receiver stands relative to line boundaries. "Line start"
/// means just after a CRLF (or at the very beginning: the CRLF that ended
/// the DATA command counts); nothing else is a line start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Just after CRLF.
    LineStart,
    /// CRLF then `.`; the dot is held back (stuffing or terminator).
    Dot,
    /// CRLF `.` CR; an LF now ends the data.
    DotCr,
    /// Inside a line (also right after a bare LF).
    InLine,
    /// A CR inside a line, held back until we know whether LF follows.
    Cr,
    /// End-of-data seen.
    Done,
}

/// Receives the message after `354`.
#[derive(Debug)]
pub struct DataReceiver {
    limits: DataLimits,
    state: State,
    /// Unstuffed, normalized message octets not taken yet; never above
    /// `max_size` octets.
    message: Vec<u8>,
    /// Octets the message has, counted on past `max_size`.
    size: u64,
    /// Octets in the current line so far, without its ending.
    line_len: usize,
    /// What `take_output` handed out last; its buffer is reused.
    taken: Vec<u8>,
    too_big: bool,
    line_too_long: bool,
}

impl DataReceiver {
    pub fn new(limits: DataLimits) -> Self {
        DataReceiver {
            limits,
            state: State::LineStart,
            message: Vec::new(),
            size: 0,
            line_len: 0,
            taken: Vec::new(),
            too_big: false,
            line_too_long: false,
        }
    }

    /// Feeds client input; input may be split anywhere. After `Done`, further
    /// calls consume nothing and return `Done { consumed: 0 }`.
    pub fn feed(&mut self, input: &[u8]) -> DataProgress {
        if self.state == State::Done {
            return DataProgress::Done { consumed: 0 };
        }
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::LineStart => match b {
                    b'.' => self.state = State::Dot,
                    b'\r' => self.state = State::Cr,
                    b'\n' => {
                        // Bare LF: normalized, but not a real line start.
                        self.line_end();
                        self.state = State::InLine;
                    }
                    _ => {
                        self.state = State::InLine;
                        continue;
                    }
                },
                State::Dot => match b {
                    b'\r' => self.state = State::DotCr,
                    b'\n' => {
                        // "." + bare LF: the line loses its stuffing dot.
                        self.line_end();
                        self.state = State::InLine;
                    }
                    _ => {
                        // Unstuffing: the dot is dropped, `b` is content.
                        self.state = State::InLine;
                        continue;
                    }
                },
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::Done;
                        return DataProgress::Done { consumed: i + 1 };
                    }
                    // CRLF "." CR x: the CR was a bare one, kept as content.
                    self.content(b"\r");
                    self.state = State::InLine;
                    continue;
                }
                State::Cr => {
                    if b == b'\n' {
                        self.line_end();
                        self.state = State::LineStart;
                    } else {
                        self.content(b"\r");
                        self.state = State::InLine;
                        continue;
                    }
                }
                State::InLine => {
                    // Copy the run of ordinary bytes in one go.
                    let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                    if run > 0 {
                        self.content(&input[i..i + run]);
                        i += run;
                        continue;
                    }
                    if b == b'\r' {
                        self.state = State::Cr;
                    } else {
                        self.line_end();
                    }
                }
                State::Done => return DataProgress::Done { consumed: i },
            }
            i += 1;
        }
        DataProgress::NeedMore
    }

    /// The message octets produced since the last call (nothing once the
    /// message is over the size limit).
    pub fn take_output(&mut self) -> &[u8] {
        std::mem::swap(&mut self.message, &mut self.taken);
        self.message.clear();
        &self.taken
    }

    /// True once end-of-data was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Message size so far in octets, including what was not stored.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The message, or why it is refused. Size wins over line length: a
    /// message both too big and with long lines gets 552.
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        if self.state != State::Done {
            Err(DataError::Incomplete)
        } else if self.too_big {
            Err(DataError::TooBig)
        } else if self.line_too_long {
            Err(DataError::LineTooLong)
        } else {
            Ok(self.message)
        }
    }

    /// Content octets (never CR LF pairs).
    fn content(&mut self, bytes: &[u8]) {
        self.line_len = self.line_len.saturating_add(bytes.len());
        if self.line_len.saturating_add(2) > self.limits.max_line {
            self.line_too_long = true;
        }
        self.store(bytes);
    }

    /// A line ending, written as CRLF whatever the client sent.
    fn line_end(&mut self) {
        self.line_len = 0;
        self.store(b"\r\n");
    }

    fn store(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.too_big {
            return;
        }
        if self.size > self.limits.max_size {
            // The message is lost anyway: free it now.
            self.too_big = true;
            self.message = Vec::new();
            return;
        }
        self.message.extend_from_slice(bytes);
    }
}

/// Writes `message` as DATA content for a next hop: bare LF becomes CRLF,
/// a `.` at the start of the message or after a line end is doubled
/// (RFC 5321 §4.5.2), the last line gets its CRLF if missing, and the
/// terminator `.` CRLF is appended. Bare CR is passed through, as the
/// receiver stores it.
pub fn dot_stuff(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 64 + 5);
    let mut stuffer = DotStuffer::default();
    stuffer.feed(message, out);
    stuffer.finish(out);
}

/// [`dot_stuff`] over a message given in pieces, split anywhere: the
/// client sends a large message a piece at a time.
#[derive(Debug, Clone, Copy)]
pub struct DotStuffer {
    /// The last octet fed was a line end (or nothing was fed yet).
    line_start: bool,
    /// The last octet fed was a CR (an LF first in the next piece ends a
    /// CRLF, not a bare LF).
    after_cr: bool,
    /// The last octet fed, if any.
    last: Option<u8>,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            after_cr: false,
            last: None,
        }
    }
}

impl DotStuffer {
    /// Appends the stuffed form of the next piece of the message to `out`.
    pub fn feed(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = piece.last() else {
            return;
        };
        // Copies whole lines at a time: only a line end can call for a
        // change (a CR before a bare LF, a dot after it).
        if self.line_start && piece[0] == b'.' {
            out.push(b'.');
        }
        let mut start = 0;
        for lf in memchr::memchr_iter(b'\n', piece) {
            let cr_before = match lf.checked_sub(1) {
                Some(before) => piece[before] == b'\r',
                None => self.after_cr,
            };
            if cr_before {
                out.extend_from_slice(&piece[start..=lf]);
            } else {
                out.extend_from_slice(&piece[start..lf]);
                out.extend_from_slice(b"\r\n");
            }
            start = lf + 1;
            if piece.get(start) == Some(&b'.') {
                out.push(b'.');
            }
        }
        out.extend_from_slice(&piece[start..]);
        self.line_start = last == b'\n';
        self.after_cr = last == b'\r';
        self.last = Some(last);
    }

    /// Ends the last line if it has no line end, then the terminator.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.last.is_some_and(|b| b != b'\n') {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DotStuffer::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: DataLimits = DataLimits {
        max_size: u64::MAX,
        max_line: usize::MAX,
    };

    /// Feeds everything at once: (progress, result).
    fn receive(input: &[u8], limits: DataLimits) -> (DataProgress, Result<Vec<u8>, DataError>) {
        let mut r = DataReceiver::new(limits);
        let progress = r.feed(input);
        (progress, r.finish())
    }

    /// Feeds one byte at a time: (consumed in total, result).
    fn receive_bytewise(
        input: &[u8],
        limits: DataLimits,
    ) -> (Option<usize>, Result<Vec<u8>, DataError>) {
        let mut r = DataReceiver::new(limits);
        for (i, b) in input.iter().enumerate() {
            match r.feed(std::slice::from_ref(b)) {
                DataProgress::NeedMore => {}
                DataProgress::Done { consumed } => {
                    assert_eq!(consumed, 1);
                    return (Some(i + 1), r.finish());
                }
            }
        }
        (None, r.finish())
    }

    fn ok(input: &[u8]) -> (usize, Vec<u8>) {
        match receive(input, BIG) {
            (DataProgress::Done { consumed }, Ok(m)) => (consumed, m),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn simple_message_and_pipelined_rest() {
        let input = b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (consumed, message) = ok(input);
        assert_eq!(message, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(&input[consumed..], b"QUIT\r\n");
    }

    #[test]
    fn empty_message_first_line_is_dot() {
        assert_eq!(ok(b".\r\n"), (3, Vec::new()));
        assert_eq!(ok(b".\r\nQUIT\r\n"), (3, Vec::new()));
    }

    #[test]
    fn only_crlf_dot_crlf_terminates() {
        // Every other terminator shape is content and the data goes on.
        let shapes: [&[u8]; 10] = [
            b"a\n.\nb",
            b"a\n.\r\nb",
            b"a\r.\rb",
            b"a\r\n.\nb",
            b"a\r.\nb",
            b"a\r.\r\nb",
            b"a\n.\rb",
            b"a\r\n.\rb",
            b"a\r\n .\r\nb",
            b"a\r\n.x\r\nb",
        ];
        for shape in shapes {
            let mut input = shape.to_vec();
            let (progress, _) = receive(&input, BIG);
            assert_eq!(progress, DataProgress::NeedMore, "{shape:?}");
            input.extend_from_slice(b"\r\n.\r\n");
            let (consumed, _) = ok(&input);
            assert_eq!(consumed, input.len(), "{shape:?}");
        }
        // A first line of "." followed by LF only is not the end either.
        assert_eq!(receive(b".\n", BIG).0, DataProgress::NeedMore);
        assert_eq!(receive(b"\n.\r\n", BIG).0, DataProgress::NeedMore);
        assert_eq!(receive(b"\r.\r\n", BIG).0, DataProgress::NeedMore);
    }

    #[test]
    fn smuggling_payload_stays_content() {
        let input = b"Subject: a\r\n\r\nhello\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n\r\nevil\r\n.\r\nQUIT\r\n";
        let (consumed, message) = ok(input);
        assert_eq!(&input[consumed..], b"QUIT\r\n");
        assert_eq!(
            message,
            b"Subject: a\r\n\r\nhello\r\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n\r\nevil\r\n".to_vec()
        );
        // Relayed, the hidden dot line is stuffed: the next hop sees no end.
        let mut wire = Vec::new();
        dot_stuff(&message, &mut wire);
        assert!(wire.windows(5).filter(|w| w == b"\r\n.\r\n").count() == 1);
        assert!(wire.ends_with(b"evil\r\n.\r\n"));
        assert!(!wire.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
    }

    #[test]
    fn bare_lf_normalized_bare_cr_kept() {
        assert_eq!(ok(b"a\nb\r\n.\r\n").1, b"a\r\nb\r\n");
        assert_eq!(ok(b"a\rb\r\n.\r\n").1, b"a\rb\r\n");
        assert_eq!(ok(b"a\r\rb\r\r\n.\r\n").1, b"a\r\rb\r\r\n");
        assert_eq!(ok(b"\n\n\r\n.\r\n").1, b"\r\n\r\n\r\n");
        assert_eq!(ok(b"a\n.\n.\r\n\r\n.\r\n").1, b"a\r\n.\r\n.\r\n\r\n");
    }

    #[test]
    fn dot_unstuffing_only_at_real_line_start() {
        assert_eq!(ok(b"..a\r\n.\r\n").1, b".a\r\n");
        assert_eq!(ok(b"x\r\n..\r\n.\r\n").1, b"x\r\n.\r\n");
        assert_eq!(ok(b"x\r\n...b\r\n.\r\n").1, b"x\r\n..b\r\n");
        assert_eq!(ok(b"x\r\n.b\r\n.\r\n").1, b"x\r\nb\r\n");
        // After a bare LF or bare CR no unstuffing happens.
        assert_eq!(ok(b"x\n..b\r\n.\r\n").1, b"x\r\n..b\r\n");
        assert_eq!(ok(b"x\r..b\r\n.\r\n").1, b"x\r..b\r\n");
        // "." then bare LF: the stuffing dot goes, the LF is normalized.
        assert_eq!(ok(b"x\r\n.\ny\r\n.\r\n").1, b"x\r\n\r\ny\r\n");
        // "." CR then other: dot dropped, CR kept as bare CR.
        assert_eq!(ok(b"x\r\n.\ry\r\n.\r\n").1, b"x\r\n\ry\r\n");
        assert_eq!(ok(b"x\r\n.\r\r\n.\r\n").1, b"x\r\n\r\r\n");
    }

    #[test]
    fn nul_and_binary_bytes_are_content() {
        assert_eq!(ok(b"a\0b\xff\r\n.\r\n").1, b"a\0b\xff\r\n");
    }

    #[test]
    fn size_limit() {
        let limits = DataLimits {
            max_size: 10,
            max_line: 1000,
        };
        // Exactly 10 octets stored: fine.
        let (p, r) = receive(b"12345678\r\n.\r\n", limits);
        assert_eq!(p, DataProgress::Done { consumed: 13 });
        assert_eq!(r, Ok(b"12345678\r\n".to_vec()));
        // 11: too big, but the terminator is still found.
        let (p, r) = receive(b"123456789\r\n.\r\nQUIT\r\n", limits);
        assert_eq!(p, DataProgress::Done { consumed: 14 });
        assert_eq!(r, Err(DataError::TooBig));
        assert_eq!(DataError::TooBig.reply().code, 552);
        assert_eq!(DataError::TooBig.reply().enhanced.as_deref(), Some("5.3.4"));
    }

    #[test]
    fn memory_stays_bounded() {
        let limits = DataLimits {
            max_size: 1000,
            max_line: 1000,
        };
        let mut r = DataReceiver::new(limits);
        let chunk = [b'x'; 4096];
        for _ in 0..1000 {
            assert_eq!(r.feed(&chunk), DataProgress::NeedMore);
            assert!(r.message.capacity() <= 2048);
        }
        assert_eq!(r.size(), 4096 * 1000);
        assert_eq!(r.feed(b"\r\n.\r\n"), DataProgress::Done { consumed: 5 });
        assert_eq!(r.finish(), Err(DataError::TooBig));
    }

    #[test]
    fn line_limit() {
        let limits = DataLimits {
            max_size: 1 << 20,
            max_line: 10,
        };
        assert!(receive(b"12345678\r\n.\r\n", limits).1.is_ok());
        let (p, r) = receive(b"123456789\r\nok\r\n.\r\n", limits);
        assert_eq!(p, DataProgress::Done { consumed: 18 });
        assert_eq!(r, Err(DataError::LineTooLong));
        assert_eq!(DataError::LineTooLong.reply(), Reply::data_line_too_long());
        // Bare-LF lines are measured as CRLF lines; stuffing dots do not count.
        assert!(receive(b"12345678\n\r\n.\r\n", limits).1.is_ok());
        assert!(receive(b"x\r\n..2345678\r\n.\r\n", limits).1.is_ok());
        assert_eq!(
            receive(b"123456789\n\r\n.\r\n", limits).1,
            Err(DataError::LineTooLong)
        );
        // Bare CR is content and counts.
        assert_eq!(
            receive(b"1234\r5678\r\n.\r\n", limits).1,
            Err(DataError::LineTooLong)
        );
        // Too big wins over line too long.
        let limits = DataLimits {
            max_size: 5,
            max_line: 5,
        };
        assert_eq!(
            receive(b"123456789\r\n.\r\n", limits).1,
            Err(DataError::TooBig)
        );
    }

    #[test]
    fn finish_before_end_is_incomplete() {
        let mut r = DataReceiver::new(BIG);
        assert_eq!(r.feed(b"abc\r\n"), DataProgress::NeedMore);
        assert!(!r.is_done());
        assert_eq!(r.finish(), Err(DataError::Incomplete));
        assert_eq!(DataError::Incomplete.reply().code, 451);
    }

    #[test]
    fn feed_after_done_consumes_nothing() {
        let mut r = DataReceiver::new(BIG);
        assert_eq!(r.feed(b".\r\n"), DataProgress::Done { consumed: 3 });
        assert!(r.is_done());
        assert_eq!(r.feed(b"QUIT\r\n"), DataProgress::Done { consumed: 0 });
        assert_eq!(r.finish(), Ok(Vec::new()));
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// Bytes biased toward the interesting ones: CR, LF, dot.
        fn message(&mut self, max_len: u64) -> Vec<u8> {
            let len = self.below(max_len + 1) as usize;
            (0..len)
                .map(|_| match self.below(8) {
                    0 | 1 => b'\r',
                    2 | 3 => b'\n',
                    4 | 5 => b'.',
                    6 => b'a',
                    _ => self.next() as u8,
                })
                .collect()
        }
    }

    #[test]
    fn split_feeding_matches_whole_feeding() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let limits_set = [
            BIG,
            DataLimits {
                max_size: 16,
                max_line: 8,
            },
        ];
        for round in 0..4000 {
            let mut input = rng.message(40);
            if round % 2 == 0 {
                input.extend_from_slice(b"\r\n.\r\n");
                input.extend(rng.message(5));
            }
            for limits in limits_set {
                let (progress, whole) = receive(&input, limits);
                let (consumed, bytewise) = receive_bytewise(&input, limits);
                let whole_consumed = match progress {
                    DataProgress::Done { consumed } => Some(consumed),
                    DataProgress::NeedMore => None,
                };
                assert_eq!(consumed, whole_consumed, "{input:?}");
                assert_eq!(bytewise, whole, "{input:?}");
                // Random split points too.
                let mut r = DataReceiver::new(limits);
                let mut at = 0;
                let mut done = None;
                while at < input.len() {
                    let end = (at + 1 + rng.below(7) as usize).min(input.len());
                    if let DataProgress::Done { consumed } = r.feed(&input[at..end]) {
                        done = Some(at + consumed);
                        break;
                    }
                    at = end;
                }
                assert_eq!(done, whole_consumed, "{input:?}");
                assert_eq!(r.finish(), whole, "{input:?}");
                if let Some(end) = whole_consumed {
                    // The terminator is exactly CRLF "." CRLF, at a line start.
                    assert!(end >= 3 && &input[end - 3..end] == b".\r\n");
                    assert!(end == 3 || &input[end - 5..end - 3] == b"\r\n");
                }
            }
        }
    }

    #[test]
    fn every_split_point_of_tricky_inputs() {
        let inputs: [&[u8]; 5] = [
            b"a\r\n..b\r\n.\rc\n.\nd\r\n.\r\nrest",
            b".\r\n",
            b"..\r\n\r\n.\r\n",
            b"\r\r\n.\r\r\n.\n\r\n.\r\n",
            b"x\n.\r\n.\r\nQUIT",
        ];
        for input in inputs {
            let (progress, whole) = receive(input, BIG);
            for split in 0..=input.len() {
                let mut r = DataReceiver::new(BIG);
                let first = r.feed(&input[..split]);
                let progress_split = match first {
                    DataProgress::Done { .. } => first,
                    DataProgress::NeedMore => match r.feed(&input[split..]) {
                        DataProgress::Done { consumed } => DataProgress::Done {
                            consumed: consumed + split,
                        },
                        p => p,
                    },
                };
                assert_eq!(progress_split, progress, "{input:?} at {split}");
                assert_eq!(r.finish(), whole.clone(), "{input:?} at {split}");
            }
        }
    }

    /// What a message becomes after stuff + receive: bare LF as CRLF, and
    /// a final CRLF if it had none.
    fn normalized(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = 0u8;
        for &b in message {
            if b == b'\n' && prev != b'\r' {
                out.push(b'\r');
            }
            out.push(b);
            prev = b;
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn dot_stuff_examples() {
        let stuff = |m: &[u8]| {
            let mut out = Vec::new();
            dot_stuff(m, &mut out);
            out
        };
        assert_eq!(stuff(b""), b".\r\n");
        assert_eq!(stuff(b"a"), b"a\r\n.\r\n");
        assert_eq!(stuff(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(stuff(b".a\r\n.\r\n..\r\n"), b"..a\r\n..\r\n...\r\n.\r\n");
        assert_eq!(stuff(b"a\n.\n"), b"a\r\n..\r\n.\r\n");
        assert_eq!(stuff(b"a\r.b"), b"a\r.b\r\n.\r\n");
        assert_eq!(stuff(b"a\r"), b"a\r\r\n.\r\n");
    }

    /// The plain byte-at-a-time definition `dot_stuff` must match.
    fn dot_stuff_bytewise(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut line_start = true;
        let mut prev = 0u8;
        for &b in message {
            match b {
                b'\n' => {
                    if prev != b'\r' {
                        out.push(b'\r');
                    }
                    out.push(b'\n');
                }
                b'.' if line_start => out.extend_from_slice(b".."),
                _ => out.push(b),
            }
            line_start = b == b'\n';
            prev = b;
        }
        if !message.is_empty() && prev != b'\n' {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn dot_stuff_matches_the_bytewise_definition() {
        let mut rng = Rng(0x0bad_5eed_1234_0001);
        for _ in 0..5000 {
            let message = rng.message(80);
            let mut out = vec![b'x'];
            dot_stuff(&message, &mut out);
            assert_eq!(out[1..], dot_stuff_bytewise(&message), "{message:?}");
        }
    }

    #[test]
    fn stuff_then_receive_round_trips() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..5000 {
            let message = rng.message(60);
            let mut wire = Vec::new();
            dot_stuff(&message, &mut wire);
            // The only terminator in the stuffed form is the final one.
            let first_end = wire
                .windows(5)
                .position(|w| w == b"\r\n.\r\n")
                .map(|p| p + 5);
            assert!(
                wire == b".\r\n" || first_end == Some(wire.len()),
                "{message:?}"
            );
            let mut trailing = wire.clone();
            trailing.extend_from_slice(b"NEXT");
            let (consumed, received) = ok(&trailing);
            assert_eq!(consumed, wire.len(), "{message:?}");
            assert_eq!(received, normalized(&message), "{message:?}");
        }
    }

    #[test]
    fn output_taken_piece_by_piece_is_the_message() {
        let input: &[u8] = b"Subject: s\r\n\r\n..dot\nbare\r\nx\r.y\r\n.\r\nNEXT";
        let (_, whole) = receive(input, BIG);
        let whole = whole.unwrap();
        for size in 1..input.len() {
            let mut r = DataReceiver::new(BIG);
            let mut taken = Vec::new();
            for piece in input.chunks(size) {
                if let DataProgress::Done { .. } = r.feed(piece) {
                    taken.extend_from_slice(r.take_output());
                    break;
                }
                taken.extend_from_slice(r.take_output());
            }
            assert_eq!(r.finish().unwrap(), b"");
            assert_eq!(taken, whole, "pieces of {size}");
        }
    }

    #[test]
    fn nothing_comes_out_past_the_size_limit() {
        let mut r = DataReceiver::new(DataLimits {
            max_size: 10,
            max_line: 1000,
        });
        r.feed(b"12345678");
        assert_eq!(r.take_output(), b"12345678");
        r.feed(b"90abc\r\n.\r\n");
        assert_eq!(r.take_output(), b"");
        assert_eq!(r.finish(), Err(DataError::TooBig));
    }

    #[test]
    fn stuffing_in_pieces_matches_stuffing_whole() {
        let messages: [&[u8]; 6] = [
            b".lead\r\nline\n.dot\r\n..two\rcr\r\nend",
            b"a\r\n.\r\n",
            b"\n\n.\n",
            b"no line end",
            b"",
            b"\r\n\r.\r\n\r",
        ];
        for message in messages {
            let mut whole = Vec::new();
            dot_stuff(message, &mut whole);
            for size in 1..=message.len().max(1) {
                let mut out = Vec::new();
                let mut stuffer = DotStuffer::default();
                for piece in message.chunks(size) {
                    stuffer.feed(piece, &mut out);
                }
                stuffer.finish(&mut out);
                assert_eq!(out, whole, "{message:?} in pieces of {size}");
            }
        }
    }
}
