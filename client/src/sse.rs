//! `text/event-stream` framing (the Server-Sent Events format of the WHATWG HTML standard,
//! §9.2.6) for a blocking reader: bytes in, frames out. Nothing here knows replicate's
//! events; [`crate::feed`] gives them meaning.
//!
//! Hand-written because the crates that parse SSE (`eventsource-stream`, `sse-stream`,
//! `reqwest-eventsource`, `eventsource-client`) are built on async `Stream`s and would pull
//! an async runtime into a client that deliberately has none; the format is small.
//!
//! # Invariants
//! - Linear time: every byte is scanned for a line end once and moved at most once (when the
//!   unfinished line left at the end of a read is moved to the front of the buffer).
//! - Bounded memory: a line longer than the limit, or an event whose `data` grows past it,
//!   is an error ([`SseError::TooLarge`]) before it is held whole; a hostile server cannot
//!   make the client buffer more than about the limit plus one read.
//! - Lines end with `\r\n`, `\n` or `\r`, also when the `\r` and the `\n` arrive in two reads.

use std::io::Read;

/// Why a stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    /// A line or an event's data is longer than the reader's limit.
    #[error("an event stream line or event is over {limit} bytes")]
    TooLarge {
        /// The limit that was passed.
        limit: usize,
    },
    /// Reading the underlying body failed (connection lost, read timeout).
    #[error("reading the event stream: {0}")]
    Io(#[from] std::io::Error),
}

/// One thing a stream said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A dispatched event: a block that had at least one `data:` line.
    Event(Event),
    /// A block without data that set the event id: the resume point moved, nothing else.
    Id(String),
    /// A comment line (`: …`), such as a keepalive: the connection is alive.
    Comment,
}

/// A dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` type; `message` when the block named none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last event id as of this event (ids are sticky: a block without `id:` keeps the
    /// previous one), empty if none was ever set.
    pub id: String,
}

/// A push parser: [`SseParser::push`] bytes as they arrive, then take frames with
/// [`SseParser::next_frame`] until it answers `None`.
#[derive(Debug)]
pub struct SseParser {
    /// Received bytes; `buf[start..]` is not consumed yet.
    buf: Vec<u8>,
    start: usize,
    /// `buf[start..scanned]` holds no line end (so a search resumes there, not at `start`).
    scanned: usize,
    /// The last line ended with a `\r` at the very end of the data: a `\n` first in the next
    /// read belongs to it.
    after_cr: bool,
    /// Whether the start of the stream (where a byte-order mark may be) is behind us.
    started: bool,
    limit: usize,
    event: String,
    data: String,
    has_data: bool,
    last_id: String,
    id_in_block: bool,
}

impl SseParser {
    /// A parser refusing lines and events over `limit` bytes.
    pub fn new(limit: usize) -> SseParser {
        SseParser {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            after_cr: false,
            started: false,
            limit,
            event: String::new(),
            data: String::new(),
            has_data: false,
            last_id: String::new(),
            id_in_block: false,
        }
    }

    /// Adds received bytes.
    ///
    /// # Errors
    /// [`SseError::TooLarge`] if the unfinished line is now over the limit.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.start > 0 {
            // Move the unfinished line to the front; it is moved once (it is consumed before
            // the next move), so this stays linear.
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        self.check_pending()
    }

    fn check_pending(&self) -> Result<(), SseError> {
        if self.scanned - self.start > self.limit {
            return Err(SseError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    /// The next complete frame in what was pushed, or `None` if more bytes are needed.
    ///
    /// # Errors
    /// [`SseError::TooLarge`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SseError> {
        loop {
            let Some(line) = self.next_line()? else {
                return Ok(None);
            };
            if let Some(frame) = self.process(&line)? {
                return Ok(Some(frame));
            }
        }
    }

    /// The next complete line, without its end.
    fn next_line(&mut self) -> Result<Option<String>, SseError> {
        if self.after_cr && self.start < self.buf.len() {
            self.after_cr = false;
            if self.buf[self.start] == b'\n' {
                self.start += 1;
                self.scanned = self.scanned.max(self.start);
            }
        }
        if !self.started {
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let have = &self.buf[self.start..];
            if have.len() < BOM.len() && BOM.starts_with(have) {
                return Ok(None);
            }
            self.started = true;
            if have.starts_with(BOM) {
                self.start += BOM.len();
                self.scanned = self.scanned.max(self.start);
            }
        }
        let found = self.buf[self.scanned..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r');
        let Some(offset) = found else {
            self.scanned = self.buf.len();
            self.check_pending()?;
            return Ok(None);
        };
        let end = self.scanned + offset;
        if end - self.start > self.limit {
            return Err(SseError::TooLarge { limit: self.limit });
        }
        let line = String::from_utf8_lossy(&self.buf[self.start..end]).into_owned();
        let mut next = end + 1;
        if self.buf[end] == b'\r' {
            match self.buf.get(next) {
                Some(b'\n') => next += 1,
                Some(_) => {}
                None => self.after_cr = true,
            }
        }
        self.start = next;
        self.scanned = next;
        Ok(Some(line))
    }

    /// Interprets one line; answers a frame when the line completes one.
    fn process(&mut self, line: &str) -> Result<Option<Frame>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line.starts_with(':') {
            return Ok(Some(Frame::Comment));
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(SseError::TooLarge { limit: self.limit });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // The standard ignores an id holding NUL.
            "id" if !value.contains('\0') => {
                value.clone_into(&mut self.last_id);
                self.id_in_block = true;
            }
            // `retry:` (reconnection delay) is the sync loop's own business; other fields are
            // ignored as the standard says.
            _ => {}
        }
        Ok(None)
    }

    /// An empty line ends a block.
    fn dispatch(&mut self) -> Option<Frame> {
        let id_in_block = std::mem::take(&mut self.id_in_block);
        let event = std::mem::take(&mut self.event);
        if !std::mem::take(&mut self.has_data) {
            return id_in_block.then(|| Frame::Id(self.last_id.clone()));
        }
        Some(Frame::Event(Event {
            event: if event.is_empty() {
                "message".to_string()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        }))
    }
}

/// Size of one read from the body.
const READ_CHUNK: usize = 64 << 10;

/// An [`SseParser`] over a blocking reader.
pub struct SseReader<R> {
    reader: R,
    parser: SseParser,
    chunk: Vec<u8>,
    ended: bool,
}

impl<R: Read> SseReader<R> {
    /// Reads frames from `reader`, refusing lines and events over `limit` bytes.
    pub fn new(reader: R, limit: usize) -> SseReader<R> {
        SseReader {
            reader,
            parser: SseParser::new(limit),
            chunk: vec![0; READ_CHUNK],
            ended: false,
        }
    }

    /// The next frame, reading (and blocking) as needed; `None` once the stream ended (an
    /// unfinished block at the end is dropped, as the standard says).
    ///
    /// # Errors
    /// The body could not be read, or [`SseError::TooLarge`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SseError> {
        loop {
            if let Some(frame) = self.parser.next_frame()? {
                return Ok(Some(frame));
            }
            if self.ended {
                return Ok(None);
            }
            let n = loop {
                match self.reader.read(&mut self.chunk) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                self.ended = true;
            } else {
                self.parser.push(&self.chunk[..n])?;
            }
        }
    }

    /// The next frame among the bytes already received, without reading: `None` if none is
    /// complete (the next one would have to wait for the network).
    ///
    /// # Errors
    /// [`SseError::TooLarge`].
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, SseError> {
        self.parser.next_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event: &str, data: &str, id: &str) -> Frame {
        Frame::Event(Event {
            event: event.into(),
            data: data.into(),
            id: id.into(),
        })
    }

    /// Every frame of `chunks` pushed one after another.
    fn parse(chunks: &[&[u8]], limit: usize) -> Result<Vec<Frame>, SseError> {
        let mut p = SseParser::new(limit);
        let mut out = Vec::new();
        for chunk in chunks {
            p.push(chunk)?;
            while let Some(f) = p.next_frame()? {
                out.push(f);
            }
        }
        Ok(out)
    }

    fn frames(text: &str) -> Vec<Frame> {
        parse(&[text.as_bytes()], 1 << 20).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn fields_comments_ids_and_types() {
        let text = ": keepalive\n\nid: 1\ndata: {\"a\":1}\n\nid: 2\n\nevent: error\ndata: x\n\n";
        assert_eq!(
            frames(text),
            vec![
                Frame::Comment,
                event("message", "{\"a\":1}", "1"),
                Frame::Id("2".into()),
                // ids are sticky
                event("error", "x", "2"),
            ]
        );
    }

    #[test]
    fn line_ends_crlf_cr_and_lf_are_the_same() {
        let lf = frames("id: 7\ndata: a\ndata: b\n\n");
        assert_eq!(lf, vec![event("message", "a\nb", "7")]);
        assert_eq!(frames("id: 7\r\ndata: a\r\ndata: b\r\n\r\n"), lf);
        assert_eq!(frames("id: 7\rdata: a\rdata: b\r\r"), lf);
    }

    #[test]
    fn multi_line_data_and_field_forms() {
        // only one leading space is stripped; a line without a colon is a field with no value
        assert_eq!(
            frames("data:  two spaces\ndata\ndata:x\n\n"),
            vec![event("message", " two spaces\n\nx", "")]
        );
        // unknown fields and retry are ignored; a block with neither data nor id is nothing
        assert_eq!(frames("retry: 10\nfoo: bar\n\n"), vec![]);
        // an id with NUL is ignored
        assert_eq!(
            frames("id: 3\n\nid: a\0b\ndata: d\n\n"),
            vec![Frame::Id("3".into()), event("message", "d", "3")]
        );
    }

    #[test]
    fn a_leading_bom_is_skipped_even_when_split() {
        let got = parse(&[b"\xEF", b"\xBB\xBF", b"data: x\n\n"], 100).ok();
        assert_eq!(got, Some(vec![event("message", "x", "")]));
    }

    #[test]
    fn split_at_every_byte_gives_the_same_frames() {
        let text = "id: 1\r\ndata: {\"k\":\"v\"}\r\n\r\n: keepalive\r\n\r\nid: 2\r\nevent: error\r\ndata: a\rdata: b\n\n";
        let whole = frames(text);
        assert_eq!(whole.len(), 3);
        let bytes: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        assert_eq!(parse(&bytes, 1 << 20).ok(), Some(whole.clone()));
        for at in 0..text.len() {
            let (a, b) = text.as_bytes().split_at(at);
            assert_eq!(
                parse(&[a, b], 1 << 20).ok(),
                Some(whole.clone()),
                "split at {at}"
            );
        }
    }

    #[test]
    fn crlf_split_between_reads_is_one_line_end() {
        // "\r" ends a read, "\n" starts the next: one line end, not an empty line (which
        // would dispatch the block early and lose the second data line).
        let got = parse(&[b"data: a\r", b"\ndata: b\r\n\r\n"], 100).ok();
        assert_eq!(got, Some(vec![event("message", "a\nb", "")]));
    }

    #[test]
    fn oversize_lines_and_events_are_refused() {
        // one long line, arriving in small reads: refused before it ends
        let long = [b'x'; 64];
        let chunks: Vec<&[u8]> = std::iter::once(&b"data: "[..])
            .chain(long.chunks(8))
            .collect();
        assert!(matches!(
            parse(&chunks, 32),
            Err(SseError::TooLarge { limit: 32 })
        ));
        // many short data lines that add up
        let many = "data: 0123456789\n".repeat(10);
        assert!(matches!(
            parse(&[many.as_bytes()], 64),
            Err(SseError::TooLarge { .. })
        ));
        // under the limit is fine, over and over (the limit is per event)
        let ok = "data: 0123456789\n\n".repeat(100);
        assert_eq!(parse(&[ok.as_bytes()], 64).map(|f| f.len()).ok(), Some(100));
    }

    #[test]
    fn an_unfinished_block_at_the_end_is_dropped() {
        let mut r = SseReader::new(&b"data: a\n\ndata: b\n"[..], 100);
        assert_eq!(
            r.next_frame().ok().flatten(),
            Some(event("message", "a", ""))
        );
        assert!(matches!(r.next_frame(), Ok(None)));
    }

    #[test]
    fn buffered_frames_do_not_read() {
        /// A reader that hands out one chunk, then fails the test if read again.
        struct Once(Option<&'static [u8]>);
        impl Read for Once {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let chunk = self
                    .0
                    .take()
                    .ok_or_else(|| std::io::Error::other("read again"))?;
                buf[..chunk.len()].copy_from_slice(chunk);
                Ok(chunk.len())
            }
        }
        let mut r = SseReader::new(
            Once(Some(b"id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\nda")),
            100,
        );
        assert_eq!(
            r.next_frame().ok().flatten(),
            Some(event("message", "a", "1"))
        );
        assert_eq!(
            r.buffered_frame().ok().flatten(),
            Some(event("message", "b", "2"))
        );
        assert!(matches!(r.buffered_frame(), Ok(None)));
        assert!(matches!(r.next_frame(), Err(SseError::Io(_))));
    }

    #[test]
    fn many_small_reads_of_a_long_line_stay_linear() {
        // 4 MiB arriving one KiB at a time: quadratic rescanning would take minutes.
        let line = format!("data: {}\n\n", "x".repeat(4 << 20));
        let chunks: Vec<&[u8]> = line.as_bytes().chunks(1024).collect();
        let t = std::time::Instant::now();
        let got = parse(&chunks, 8 << 20).map(|f| f.len()).ok();
        assert_eq!(got, Some(1));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
    }
}
