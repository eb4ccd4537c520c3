//! Line framing of a pipe's bytes (bounded: a line longer than [`MAX_LINE`] is cut into
//! pieces, none lost) and the small tail kept for the "last output" of a dead instance.
use std::collections::VecDeque;

/// Longest line kept whole; longer lines are split into pieces of this size.
pub const MAX_LINE: usize = 16 * 1024;

/// Bytes of output kept per instance for the "last output" line of a crash report.
pub const TAIL_BYTES: usize = 2048;

/// Cuts a byte stream into lines (without their `\n`; a `\r` before it is dropped too). Holds
/// at most [`MAX_LINE`] bytes of an unfinished line.
#[derive(Debug, Default)]
pub struct LineFramer {
    partial: Vec<u8>,
}

fn text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

impl LineFramer {
    /// Feeds `data`; calls `line` for every complete line (and every full [`MAX_LINE`] piece).
    pub fn push(&mut self, mut data: &[u8], mut line: impl FnMut(String)) {
        while !data.is_empty() {
            let room = MAX_LINE - self.partial.len();
            // One byte past the room: a newline right after a full line still ends it.
            let window = &data[..data.len().min(room + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    if self.partial.is_empty() {
                        line(text(&window[..i]));
                    } else {
                        self.partial.extend_from_slice(&window[..i]);
                        line(text(&self.partial));
                        self.partial.clear();
                    }
                    data = &data[i + 1..];
                }
                None if window.len() > room => {
                    // A full piece without a newline: out it goes, the rest follows.
                    self.partial.extend_from_slice(&data[..room]);
                    line(String::from_utf8_lossy(&self.partial).into_owned());
                    self.partial.clear();
                    data = &data[room..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &[];
                }
            }
        }
    }

    /// At end of stream: the unfinished last line, if any.
    pub fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let t = text(&self.partial);
        self.partial.clear();
        Some(t)
    }
}

/// The last [`TAIL_BYTES`] of an instance's output (both streams, in arrival order).
#[derive(Debug, Default)]
pub struct Tail {
    buf: VecDeque<u8>,
}

impl Tail {
    pub fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(TAIL_BYTES)..];
        let over = (self.buf.len() + data.len()).saturating_sub(TAIL_BYTES);
        self.buf.drain(..over);
        self.buf.extend(data);
    }

    /// The tail, lossily decoded and trimmed.
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).trim().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(chunks: &[&[u8]]) -> (Vec<String>, Option<String>) {
        let mut f = LineFramer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, |l| out.push(l));
        }
        let rest = f.finish();
        (out, rest)
    }

    #[test]
    fn lines_are_framed_across_reads() {
        let (lines, rest) = frame(&[b"he", b"llo\nwor", b"ld\r\n\nlast"]);
        assert_eq!(lines, ["hello", "world", ""]);
        assert_eq!(rest.as_deref(), Some("last"));
        let (lines, rest) = frame(&[b"a\nb\n"]);
        assert_eq!(lines, ["a", "b"]);
        assert_eq!(rest, None);
    }

    #[test]
    fn a_long_line_is_split_into_pieces_and_nothing_is_lost() {
        let long: Vec<u8> = (0..(MAX_LINE * 2 + 100))
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let mut input = long.clone();
        input.extend_from_slice(b"\nshort\n");
        // Fed in odd-sized reads.
        let chunks: Vec<&[u8]> = input.chunks(4093).collect();
        let (lines, rest) = frame(&chunks);
        assert_eq!(rest, None);
        assert_eq!(
            lines.len(),
            4,
            "two full pieces, the remainder, then `short`"
        );
        assert!(lines[..3].iter().all(|l| l.len() <= MAX_LINE));
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[..3].concat().as_bytes(), &long[..]);
        assert_eq!(lines[3], "short");
    }

    #[test]
    fn a_line_of_exactly_max_line_bytes_is_one_line() {
        let mut input = vec![b'x'; MAX_LINE];
        input.push(b'\n');
        let (lines, rest) = frame(&[&input]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        input.push(b'y');
        input.push(b'\n');
        let (lines, _) = frame(&[&input[..MAX_LINE], &input[MAX_LINE..]]);
        assert_eq!(
            lines.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE, 1]
        );
        assert_eq!(rest, None);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        let (lines, _) = frame(&[b"caf\xe9\n"]);
        assert_eq!(lines, ["caf\u{fffd}"]);
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(b"first\n");
        assert_eq!(t.text(), "first");
        t.push(&vec![b'z'; TAIL_BYTES * 3]);
        t.push(b"\nbye\n");
        let s = t.text();
        assert_eq!(s.len(), TAIL_BYTES - 1);
        assert!(s.ends_with("zz\nbye"));
    }
}
