//! Server-sent events, split from a body as its bytes arrive.
//!
//! The engines stream `data: {json}` events ended by a blank line, with
//! `data: [DONE]` last; lines may end in `\n` or `\r\n`, `:` lines are
//! keep-alive comments, and llama-server reports a failure as an `error:`
//! line. Unlike a browser's parser this one refuses fields it does not know:
//! the only peer is an OpenAI-compatible engine, and a body that is not an
//! event stream (an HTML error page, a proxy's banner) has to surface as
//! malformed, not be skipped until the stream looks merely cut.

/// Most bytes one event may hold (its data and its unfinished line): an
/// event carries one step's text and log-probabilities, kilobytes at most;
/// a peer that never ends its line must not grow this buffer without bound.
pub(crate) const MAX_EVENT_BYTES: usize = 4 << 20;

/// One complete event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SseEvent {
    /// Its `data` lines, joined by `\n`.
    Data(String),
    /// An `error:` line's value or the data of an `event: error`.
    Error(String),
}

/// Why the bytes are not an event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SseFault {
    TooLarge,
    NotUtf8,
    /// A line that is not a field of an event (at most 1 KiB of it).
    NotSse(String),
}

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// How far `buf` has been searched for a newline.
    scanned: usize,
    data: String,
    has_data: bool,
    error: Option<String>,
    is_error_event: bool,
    /// Whether a line was read: a byte-order mark may start the first.
    past_first_line: bool,
}

impl SseParser {
    pub(crate) fn new() -> SseParser {
        SseParser::default()
    }

    /// Takes the next bytes of the body; the events they complete go to `out`.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseFault> {
        // `buf` is out of `self` while its lines are handled, so they can
        // be borrowed from it rather than copied.
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(bytes);
        let handled = self.lines(&buf, out);
        self.buf = buf;
        handled?;
        self.scanned = self.buf.len();
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.start + self.data.len() > MAX_EVENT_BYTES {
            return Err(SseFault::TooLarge);
        }
        Ok(())
    }

    fn lines(&mut self, buf: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseFault> {
        while let Some(nl) = buf[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + nl;
            let line = &buf[self.start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.line(
                std::str::from_utf8(line).map_err(|_| SseFault::NotUtf8)?,
                out,
            )?;
            self.start = end + 1;
            self.scanned = self.start;
        }
        Ok(())
    }

    /// The body ended: a last line without its newline, and an event
    /// without its blank line, still count.
    pub(crate) fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseFault> {
        let buf = std::mem::take(&mut self.buf);
        let rest = &buf[self.start..];
        let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
        if !rest.is_empty() {
            self.line(
                std::str::from_utf8(rest).map_err(|_| SseFault::NotUtf8)?,
                out,
            )?;
        }
        self.start = 0;
        self.scanned = 0;
        self.dispatch(out);
        Ok(())
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) -> Result<(), SseFault> {
        let line = match std::mem::replace(&mut self.past_first_line, true) {
            false => line.strip_prefix('\u{feff}').unwrap_or(line),
            true => line,
        };
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "error" => self.error = Some(value.to_owned()),
            "event" => self.is_error_event = value == "error",
            "id" | "retry" => {}
            _ => {
                let mut end = line.len().min(1024);
                while !line.is_char_boundary(end) {
                    end -= 1;
                }
                return Err(SseFault::NotSse(line[..end].to_owned()));
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let data = std::mem::take(&mut self.data);
        if let Some(error) = self.error.take() {
            out.push(SseEvent::Error(error));
        } else if self.has_data {
            out.push(if self.is_error_event {
                SseEvent::Error(data)
            } else {
                SseEvent::Data(data)
            });
        }
        self.has_data = false;
        self.is_error_event = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(body: &[u8], piece: usize) -> Result<Vec<SseEvent>, SseFault> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in body.chunks(piece) {
            p.push(c, &mut out)?;
        }
        p.finish(&mut out)?;
        Ok(out)
    }

    fn data(s: &str) -> SseEvent {
        SseEvent::Data(s.into())
    }

    #[test]
    fn events_are_the_same_whatever_the_pieces() {
        let body = b"\xEF\xBB\xBF: ping\r\n\r\ndata: {\"a\":1}\r\n\r\ndata:{\"b\":\r\ndata: 2}\n\nid: 7\nretry: 10\ndata: [DONE]\n\n";
        let want = vec![data("{\"a\":1}"), data("{\"b\":\n2}"), data("[DONE]")];
        for piece in [1, 2, 3, 7, body.len()] {
            assert_eq!(parse_in_pieces(body, piece).unwrap(), want, "{piece}");
        }
    }

    #[test]
    fn a_last_event_without_its_blank_line_counts() {
        assert_eq!(
            parse_in_pieces(b"data: x\n\ndata: y", 4).unwrap(),
            vec![data("x"), data("y")]
        );
        assert_eq!(parse_in_pieces(b"", 4).unwrap(), vec![]);
        assert_eq!(parse_in_pieces(b": only a comment\n", 4).unwrap(), vec![]);
    }

    #[test]
    fn errors_come_as_error_lines_or_error_events() {
        assert_eq!(
            parse_in_pieces(b"error: {\"code\":500}\n\nevent: error\ndata: boom\n\n", 5).unwrap(),
            vec![
                SseEvent::Error("{\"code\":500}".into()),
                SseEvent::Error("boom".into())
            ]
        );
    }

    #[test]
    fn what_is_not_an_event_stream_is_refused() {
        assert_eq!(
            parse_in_pieces(b"<html><body>Bad Gateway</body></html>\n", 8),
            Err(SseFault::NotSse(
                "<html><body>Bad Gateway</body></html>".into()
            ))
        );
        assert_eq!(
            parse_in_pieces(b"total junk without newline", 8),
            Err(SseFault::NotSse("total junk without newline".into()))
        );
        assert_eq!(
            parse_in_pieces(b"data: \xFF\xFE\n\n", 8),
            Err(SseFault::NotUtf8)
        );
    }

    #[test]
    fn an_event_over_the_cap_is_refused_before_it_is_all_read() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let line = format!("data: {}\n", "x".repeat(64 << 10));
        let mut result = Ok(());
        for _ in 0..(MAX_EVENT_BYTES / line.len() + 2) {
            result = p.push(line.as_bytes(), &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseFault::TooLarge));
        assert!(out.is_empty());
        let mut p = SseParser::new();
        let unended = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(p.push(&unended, &mut out), Err(SseFault::TooLarge));
    }
}
