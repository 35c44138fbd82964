//! RESP2 on the wire, for the connection that reads streams directly
//! ([`crate::redis::direct`]): encoding a command, finding where a reply
//! ends as its bytes arrive, and walking a complete reply without copying
//! its strings (each is a slice of the one buffer the reply arrived in).

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::redis::{Result, StreamError};

/// Appends `args` as one RESP2 command (an array of bulk strings).
pub(crate) fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    encode_header(out, args.len());
    for arg in args {
        encode_bulk(out, arg);
    }
}

/// The header of a command of `args` arguments.
pub(crate) fn encode_header(out: &mut impl BufMut, args: usize) {
    out.put_u8(b'*');
    out.put_slice(itoa::Buffer::new().format(args).as_bytes());
    out.put_slice(b"\r\n");
}

/// One argument, as a bulk string.
pub(crate) fn encode_bulk(out: &mut impl BufMut, arg: &[u8]) {
    out.put_u8(b'$');
    out.put_slice(itoa::Buffer::new().format(arg.len()).as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(arg);
    out.put_slice(b"\r\n");
}

fn protocol(detail: impl Into<String>) -> StreamError {
    StreamError::Shape {
        command: "RESP",
        detail: detail.into(),
    }
}

/// The end of the line starting at `from` (the index of its `\r`).
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let nl = from + memchr::memchr(b'\n', buf.get(from..)?)?;
    (nl > from).then_some(nl - 1)
}

/// A `$` or `*` header's number (`-1` for nil) and where the element
/// after its line starts; `from` is just past the type byte. The digits are
/// parsed while looking for the `\r`: this runs for every string of every
/// reply, twice (scan, then walk), and a `memchr` for the line's end and
/// then a parse of it cost about twice as much. None while the line is
/// incomplete.
fn length_line(buf: &[u8], from: usize) -> Result<Option<(i64, usize)>> {
    let bad = |to: usize| {
        let line = &buf[from..to.min(buf.len())];
        protocol(format!("bad length {:?}", String::from_utf8_lossy(line)))
    };
    let negative = buf.get(from) == Some(&b'-');
    let digits = from + usize::from(negative);
    let (mut n, mut i) = (0i64, digits);
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\r') => break,
            // 18 digits at most: no overflow, and no length is near that.
            Some(&d) if d.is_ascii_digit() && i - digits < 18 => n = n * 10 + i64::from(d - b'0'),
            Some(_) => return Err(bad(line_end(buf, from).unwrap_or(buf.len()))),
        }
        i += 1;
    }
    if i == digits {
        return Err(bad(i));
    }
    match buf.get(i + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((if negative { -n } else { n }, i + 2))),
        Some(_) => Err(bad(i)),
    }
}

/// Finds where one reply ends, resuming where it stopped as more bytes
/// arrive (a large reply comes in many reads; scanning it once keeps that
/// linear).
#[derive(Debug, Default)]
pub struct Scan {
    /// Start of the next element not yet seen whole.
    pos: usize,
    /// Elements still to come in each array opened so far.
    open: Vec<i64>,
}

impl Scan {
    /// The length of the first reply in `buf` once it is complete, else
    /// None (call again with the same buffer grown). Resets itself after
    /// a complete reply.
    pub fn complete(&mut self, buf: &[u8]) -> Result<Option<usize>> {
        loop {
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(None);
            };
            let next = match kind {
                b'+' | b'-' | b':' => match line_end(buf, self.pos + 1) {
                    Some(end) => end + 2,
                    None => return Ok(None),
                },
                b'$' => {
                    let Some((len, after_line)) = length_line(buf, self.pos + 1)? else {
                        return Ok(None);
                    };
                    if len < 0 {
                        after_line
                    } else {
                        let next = after_line + len as usize + 2;
                        if next > buf.len() {
                            return Ok(None);
                        }
                        next
                    }
                }
                b'*' => {
                    let Some((len, after_line)) = length_line(buf, self.pos + 1)? else {
                        return Ok(None);
                    };
                    self.pos = after_line;
                    if len > 0 {
                        self.open.push(len);
                        continue;
                    }
                    after_line
                }
                other => return Err(protocol(format!("unknown reply type byte {other:#04x}"))),
            };
            self.pos = next;
            // One element is whole: it may close the arrays around it.
            loop {
                match self.open.last_mut() {
                    None => {
                        let len = self.pos;
                        self.pos = 0;
                        return Ok(Some(len));
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// A walk over one complete reply.
pub(crate) struct Cursor {
    buf: Bytes,
    pos: usize,
}

/// One element's header: its type byte and the rest of its first line.
struct Header {
    kind: u8,
    start: usize,
    end: usize,
}

impl Cursor {
    pub(crate) fn new(reply: Bytes) -> Self {
        Cursor { buf: reply, pos: 0 }
    }

    fn header(&mut self) -> Result<Header> {
        let kind = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| protocol("reply ended early"))?;
        let end = line_end(&self.buf, self.pos + 1).ok_or_else(|| protocol("reply ended early"))?;
        let header = Header {
            kind,
            start: self.pos + 1,
            end,
        };
        self.pos = end + 2;
        Ok(header)
    }

    /// Bytes not yet walked.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn line(&self, h: &Header) -> &[u8] {
        &self.buf[h.start..h.end]
    }

    /// An error reply as an error; any other header as itself.
    fn checked(&mut self) -> Result<Header> {
        let h = self.header()?;
        if h.kind == b'-' {
            return Err(StreamError::Reply(
                String::from_utf8_lossy(self.line(&h)).into_owned(),
            ));
        }
        Ok(h)
    }

    /// A `$` or `*` header's type byte and length, the cursor moved past
    /// its line; None (the cursor unmoved) when the next element is of
    /// another type.
    fn length_header(&mut self) -> Result<Option<(u8, i64)>> {
        let kind = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| protocol("reply ended early"))?;
        if kind != b'$' && kind != b'*' {
            return Ok(None);
        }
        let (len, next) =
            length_line(&self.buf, self.pos + 1)?.ok_or_else(|| protocol("reply ended early"))?;
        self.pos = next;
        Ok(Some((kind, len)))
    }

    /// An array's length; None for a nil array (or nil string).
    pub(crate) fn array(&mut self, what: &'static str) -> Result<Option<usize>> {
        match self.length_header()? {
            Some((_, len)) if len < 0 => Ok(None),
            Some((b'*', len)) => Ok(Some(len as usize)),
            Some(_) => Err(protocol(format!(
                "expected an array for {what}, got a string"
            ))),
            None => {
                let other = self.checked()?.kind;
                Err(protocol(format!(
                    "expected an array for {what}, got type {:?}",
                    other as char
                )))
            }
        }
    }

    /// A string (bulk, simple or integer) as a slice of the reply.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<Bytes> {
        let span = self.string_span(what)?;
        Ok(self.buf.slice(span))
    }

    /// Where the next string (bulk, simple or integer) lies in the reply.
    pub(crate) fn string_span(&mut self, what: &'static str) -> Result<Range<usize>> {
        let other = match self.length_header()? {
            Some((b'$', len)) if len < 0 => {
                return Err(protocol(format!("expected a string for {what}, got nil")))
            }
            Some((b'$', len)) => {
                let start = self.pos;
                let end = start + len as usize;
                if end + 2 > self.buf.len() {
                    return Err(protocol("reply ended early"));
                }
                self.pos = end + 2;
                return Ok(start..end);
            }
            Some((other, _)) => other,
            None => match self.checked()? {
                Header {
                    kind: b'+' | b':',
                    start,
                    end,
                } => return Ok(start..end),
                h => h.kind,
            },
        };
        Err(protocol(format!(
            "expected a string for {what}, got type {:?}",
            other as char
        )))
    }

    /// The whole reply, which [`Cursor::string_span`]'s ranges index.
    pub(crate) fn reply(&self) -> &Bytes {
        &self.buf
    }

    /// Checks the reply is `+OK` (or any simple string), else its error.
    pub(crate) fn ok(&mut self) -> Result<()> {
        let h = self.checked()?;
        match h.kind {
            b'+' => Ok(()),
            other => Err(protocol(format!(
                "expected a status reply, got type {:?}",
                other as char
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(reply: &[u8]) -> Option<usize> {
        Scan::default().complete(reply).unwrap()
    }

    #[test]
    fn scan_finds_the_end_of_nested_replies() {
        let reply = b"*2\r\n*2\r\n$1\r\na\r\n*-1\r\n:5\r\n+x";
        assert_eq!(whole(reply), Some(reply.len() - 2));
        assert_eq!(whole(b"*0\r\n"), Some(4));
        assert_eq!(whole(b"$-1\r\n"), Some(5));
        assert_eq!(whole(b"-ERR no\r\n"), Some(9));
    }

    #[test]
    fn scan_waits_for_every_byte_and_resumes() {
        let reply = b"*2\r\n$3\r\nabc\r\n$2\r\nde\r\n";
        for cut in 0..reply.len() {
            assert_eq!(whole(&reply[..cut]), None, "complete at {cut}");
        }
        // Fed one more byte at a time into one scan: found exactly at the end.
        let mut scan = Scan::default();
        for cut in 0..reply.len() {
            assert_eq!(scan.complete(&reply[..cut]).unwrap(), None);
        }
        assert_eq!(scan.complete(reply).unwrap(), Some(reply.len()));
    }

    #[test]
    fn lengths_parse_and_bad_ones_are_named() {
        let len = |line: &[u8]| length_line(&[&b"$"[..], line, &b"\r\n"[..]].concat(), 1);
        assert_eq!(len(b"0").unwrap(), Some((0, 4)));
        assert_eq!(len(b"5000").unwrap(), Some((5000, 7)));
        assert_eq!(len(b"-1").unwrap(), Some((-1, 5)));
        assert_eq!(
            len(b"123456789012345678").unwrap().unwrap().0,
            123456789012345678
        );
        for bad in [
            &b""[..],
            b"-",
            b"1x",
            b"+1",
            b"1234567890123456789",
            b"1\rx",
        ] {
            let err = len(bad).unwrap_err();
            assert!(err.to_string().contains("bad length"), "{err}");
        }
        // Incomplete lines wait for more bytes.
        assert_eq!(length_line(b"$12", 1).unwrap(), None);
        assert_eq!(length_line(b"$12\r", 1).unwrap(), None);
    }

    #[test]
    fn scan_refuses_an_unknown_type_byte() {
        let err = Scan::default().complete(b"?1\r\n").unwrap_err();
        assert!(err.to_string().contains("unknown reply type"), "{err}");
    }

    #[test]
    fn cursor_reads_strings_as_slices_and_errors_as_errors() {
        let mut c = Cursor::new(Bytes::from_static(b"*2\r\n$3\r\nabc\r\n:12\r\n"));
        assert_eq!(c.array("x").unwrap(), Some(2));
        assert_eq!(c.string("x").unwrap(), "abc");
        assert_eq!(c.string("x").unwrap(), "12");
        let mut c = Cursor::new(Bytes::from_static(b"-NOGROUP no such group\r\n"));
        let err = c.array("x").unwrap_err();
        assert!(
            matches!(err, StreamError::Reply(ref t) if t.starts_with("NOGROUP")),
            "{err}"
        );
    }

    #[test]
    fn encodes_a_command_as_bulk_strings() {
        let mut out = BytesMut::new();
        encode_command(&mut out, &[b"XACK", b"s"]);
        assert_eq!(&out[..], b"*2\r\n$4\r\nXACK\r\n$1\r\ns\r\n");
    }
}
