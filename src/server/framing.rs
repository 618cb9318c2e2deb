//! Spots an HTTP/1 request head that frames its body two ways, with both
//! `Content-Length` and `Transfer-Encoding` — the shape of every CL.TE and
//! TE.CL smuggling attack.
//!
//! hyper resolves such a head safely (chunked wins, RFC 9112 §6.3, and the
//! connection closes after the response) but leaves no trace of it: the
//! `Content-Length` is dropped before the request reaches a service. nginx
//! (since 1.21.1) and Envoy refuse it with 400 instead, so that the attempt
//! is answered, logged and counted rather than quietly half-served. That
//! needs the raw bytes, so the HTTP/1 connection's transport (`conn`)
//! feeds [`Scan`] what hyper reads.
//!
//! The scan does not frame messages (that would be a second HTTP parser):
//! it splits the byte stream into blocks at empty lines and notes a block in
//! which one line starts with `content-length:` and another with
//! `transfer-encoding:` (any case, as hyper matches them). A request head is
//! such a block. So is, rarely, a part of a body that embeds a whole HTTP
//! message with both headers; then the next chunked request on that
//! connection is refused too. The connection is refused only when hyper
//! also hands over a request with `Transfer-Encoding`, which is what the
//! ambiguous head turns into.
//!
//! Cost: a `memchr` for `\n` per line, and a few byte comparisons at the
//! start of each line that begins with `c` or `t`: 255 instructions a
//! request for wrk's 3-line head (callgrind), about 85 a line. Measured
//! against that and worse for such heads: one `memchr_iter` per read (440;
//! the searcher is set up per call), and a word-at-a-time loop in a
//! register (360).

const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
const BOTH: u8 = 0b11;

/// Where the scan stands within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Nothing of the line seen yet.
    Start,
    /// A lone `\r`: the line is empty if `\n` follows.
    Cr,
    /// The first `matched` bytes of `NAMES[name]` seen.
    Name { name: u8, matched: u8 },
    /// Nothing more of interest before the next `\n`.
    Rest,
}

const NAMES: [&[u8]; 2] = [CONTENT_LENGTH, TRANSFER_ENCODING];

/// The scan's state between reads (lines and blocks span reads).
#[derive(Debug, Clone, Copy)]
pub(super) struct Scan {
    line: Line,
    /// Bit 0: a `content-length:` line in this block, bit 1:
    /// `transfer-encoding:`.
    block: u8,
}

impl Scan {
    /// At the start of a line and of a block: the start of a connection, or
    /// where hyper stopped after its last whole message.
    pub(super) const fn new() -> Self {
        Self { line: Line::Start, block: 0 }
    }

    /// Scans the next bytes of the stream; returns how many blocks with
    /// both headers ended in them.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut found = 0;
        let mut i = 0;
        while i < bytes.len() {
            if self.line == Line::Rest {
                match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.line = Line::Start;
                        continue;
                    }
                    None => break,
                }
            }
            let byte = bytes[i];
            i += 1;
            self.line = match (self.line, byte) {
                (Line::Start | Line::Cr, b'\n') => {
                    // An empty line: the block ends.
                    if self.block == BOTH {
                        found += 1;
                    }
                    self.block = 0;
                    Line::Start
                }
                (Line::Start, b'\r') => Line::Cr,
                (Line::Start, b'c' | b'C') => Line::Name { name: 0, matched: 1 },
                (Line::Start, b't' | b'T') => Line::Name { name: 1, matched: 1 },
                (Line::Name { .. }, b'\n') => Line::Start,
                (Line::Name { name, matched }, _) => {
                    let want = NAMES[usize::from(name)];
                    if byte.to_ascii_lowercase() != want[usize::from(matched)] {
                        Line::Rest
                    } else if usize::from(matched) + 1 == want.len() {
                        self.block |= 1 << name;
                        Line::Rest
                    } else {
                        Line::Name { name, matched: matched + 1 }
                    }
                }
                _ => Line::Rest,
            };
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(chunks: &[&[u8]]) -> usize {
        let mut scan = Scan::new();
        chunks.iter().map(|c| scan.feed(c)).sum()
    }

    /// Every split of `bytes` into two reads gives the same answer.
    fn found_however_split(bytes: &[u8]) -> usize {
        let whole = found(&[bytes]);
        for at in 0..=bytes.len() {
            assert_eq!(found(&[&bytes[..at], &bytes[at..]]), whole, "split at {at}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(found(&bytewise), whole, "byte by byte");
        whole
    }

    #[test]
    fn a_head_with_both_headers_in_either_order_and_any_case() {
        assert_eq!(
            found_however_split(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            1
        );
        assert_eq!(found_however_split(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n"), 1);
        assert_eq!(found_however_split(b"POST / HTTP/1.1\ntransfer-encoding: chunked\ncontent-length: 4\n\n"), 1, "bare LF");
    }

    #[test]
    fn heads_with_one_framing_or_lookalike_names_are_not_counted() {
        assert_eq!(found_however_split(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"), 0);
        assert_eq!(found_however_split(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"), 0);
        let lookalikes = b"POST / HTTP/1.1\r\nContent-Lengths: 4\r\nx-content-length: 4\r\ntransfer-encodingx: y\r\n Transfer-Encoding: chunked\r\ncontent-type: a\r\n\r\n";
        assert_eq!(found_however_split(lookalikes), 0);
        // The two headers in different messages of one connection.
        assert_eq!(
            found_however_split(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            0
        );
    }

    #[test]
    fn each_ambiguous_head_on_a_connection_counts() {
        let head = b"GET / HTTP/1.1\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(found_however_split(&[&head[..], &head[..]].concat()), 2);
    }

    /// The same answer, the slow and obvious way: split into lines, group
    /// lines into blocks at empty ones, look at each line's start.
    fn reference(bytes: &[u8]) -> usize {
        let mut found = 0;
        let mut block = 0u8;
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        // The text after the last `\n` is a line not yet ended.
        lines.pop();
        for line in lines {
            let line = line.to_ascii_lowercase();
            if line.is_empty() || line == b"\r" {
                if block == BOTH {
                    found += 1;
                }
                block = 0;
            } else if line.starts_with(CONTENT_LENGTH) {
                block |= 1;
            } else if line.starts_with(TRANSFER_ENCODING) {
                block |= 2;
            }
        }
        found
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_reference_however_the_bytes_arrive(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(&b"\r\n"[..]),
                    proptest::strategy::Just(&b"\n"[..]),
                    proptest::strategy::Just(&b"\r"[..]),
                    proptest::strategy::Just(&b"Content-Length: 4"[..]),
                    proptest::strategy::Just(&b"content-length:"[..]),
                    proptest::strategy::Just(&b"transfer-encoding: chunked"[..]),
                    proptest::strategy::Just(&b"TRANSFER-ENCODING:"[..]),
                    proptest::strategy::Just(&b"content-lengt"[..]),
                    proptest::strategy::Just(&b"t"[..]),
                    proptest::strategy::Just(&b"c"[..]),
                    proptest::strategy::Just(&b" x"[..]),
                    proptest::strategy::Just(&b"POST / HTTP/1.1"[..]),
                    proptest::strategy::Just(&b"\x0b\x8a\x09"[..]),
                    proptest::strategy::Just(&[b'x'; 100][..]),
                ],
                0..60,
            ),
            cuts in proptest::collection::vec(0usize..2000, 0..6),
        ) {
            let bytes = parts.concat();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut scan = Scan::new();
            let mut from = 0;
            let mut found = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                found += scan.feed(&bytes[from..cut]);
                from = cut;
            }
            proptest::prop_assert_eq!(found, reference(&bytes));
        }
    }
}
