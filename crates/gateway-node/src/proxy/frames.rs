//! What RFC 6455 asks of an intermediary, checked on a byte stream that passes through as it
//! is: frame headers are parsed (tungstenite's parser), text messages are checked for UTF-8
//! across frames and reads, close frames are read whole; payloads are never copied or
//! collected, so a relayed message costs one pass over its bytes at most.
//!
//! No I/O here: the relay hands in whatever it has read and passes on what this accepts.

use std::io::Cursor;

use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Which end wrote the frames: RFC 6455 requires client frames to be masked and server frames
/// not to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// Frames from a WebSocket client (masked).
    Client,
    /// Frames from a WebSocket server (unmasked).
    Server,
}

/// A stream that breaks RFC 6455: the close code its sender gets, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// 1002 (protocol error), 1007 (invalid UTF-8) or 1009 (message too big).
    pub code: u16,
    /// What was wrong, for the close reason and the log.
    pub reason: &'static str,
}

impl Violation {
    fn protocol(reason: &'static str) -> Violation {
        Violation { code: 1002, reason }
    }
}

/// What the next bytes of the stream are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `len` bytes to pass on as they are: a frame header with as much of its payload as is
    /// here, or more of the current frame's payload.
    Pass {
        /// Bytes accepted.
        len: usize,
        /// They begin with a frame header.
        starts_frame: bool,
        /// They belong to a text, binary or continuation frame (not a ping or pong).
        data: bool,
        /// They end a text or binary message.
        ends_message: bool,
    },
    /// A whole close frame of `len` bytes. It is not consumed: the relay writes its own close
    /// (RFC 6455 lets an intermediary change a close's code, and 1005 must become 1000), so it
    /// skips these bytes once what comes before them is written.
    Close {
        /// Bytes of the close frame.
        len: usize,
        /// Its status code; `None` when it has none (1005).
        code: Option<u16>,
        /// Its reason.
        reason: String,
    },
    /// Too few bytes to go on (part of a header, or of a close frame).
    Need,
}

/// UTF-8 checked across chunks: a sequence cut by a chunk's end is carried to the next.
#[derive(Debug, Default)]
struct Utf8Stream {
    carry: [u8; 4],
    len: usize,
}

/// Bytes of the UTF-8 sequence that `lead` begins (a lead byte std accepted as a prefix).
fn sequence_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Stream {
    /// Checks the next chunk; false when the text is not UTF-8.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        if self.len > 0 {
            let need = sequence_width(self.carry[0]);
            while self.len < need && !data.is_empty() {
                self.carry[self.len] = data[0];
                self.len += 1;
                data = &data[1..];
            }
            match std::str::from_utf8(&self.carry[..self.len]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_none() && self.len < need => return true,
                Err(_) => return false,
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let tail = &data[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.len = tail.len();
                true
            }
        }
    }

    /// The message ended: false when it ended inside a sequence.
    fn finish(&mut self) -> bool {
        let whole = self.len == 0;
        self.len = 0;
        whole
    }
}

/// XORs `data` with `mask`, starting `offset` bytes into the payload.
fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let start = (offset % 4) as usize;
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(start + i) & 3];
    }
}

/// Whether a close code may travel in a close frame (RFC 6455 section 7.4, and the
/// registered 1012 to 1014).
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The state of one direction's frame stream.
#[derive(Debug)]
pub struct FrameChecker {
    sender: Sender,
    max_message: u64,
    /// Payload bytes of the current frame not yet passed.
    remaining: u64,
    /// A frame was refused after part of it was passed.
    cut: bool,
    /// Payload bytes of the current frame passed so far (the mask's phase).
    offset: u64,
    mask: Option<[u8; 4]>,
    /// The current frame carries text to check.
    text_frame: bool,
    /// The current frame is a data frame.
    data_frame: bool,
    /// The current frame is a data frame with FIN.
    final_data: bool,
    /// A fragmented message is open: `Some(text)`.
    message: Option<bool>,
    message_len: u64,
    utf8: Utf8Stream,
}

impl FrameChecker {
    /// A checker for frames from `sender`, refusing messages over `max_message` bytes.
    pub fn new(sender: Sender, max_message: usize) -> FrameChecker {
        FrameChecker {
            sender,
            max_message: max_message as u64,
            remaining: 0,
            cut: false,
            offset: 0,
            mask: None,
            text_frame: false,
            data_frame: false,
            final_data: false,
            message: None,
            message_len: 0,
            utf8: Utf8Stream::default(),
        }
    }

    /// Whether the bytes passed so far end inside a frame (nothing else may be written to
    /// the stream's receiver until it ends).
    pub fn mid_frame(&self) -> bool {
        self.remaining > 0 || self.cut
    }

    /// Whether the bytes passed so far end inside a message (a frame, or a fragmented
    /// message between its frames).
    pub fn mid_message(&self) -> bool {
        self.mid_frame() || self.message.is_some()
    }

    /// Looks at the bytes that follow what was passed, and accepts what it can. Text payloads
    /// from a client are unmasked in place to be checked and masked again, so `data` leaves
    /// as it came.
    pub fn step(&mut self, data: &mut [u8]) -> Result<Step, Violation> {
        if self.remaining > 0 {
            let n = self.remaining.min(data.len() as u64) as usize;
            if n == 0 {
                return Ok(Step::Need);
            }
            self.payload(&mut data[..n])?;
            let ends_message = self.frame_done().inspect_err(|_| {
                // The frame's start was passed and its end is not: its receiver is in it.
                self.cut = true;
            })?;
            return Ok(Step::Pass {
                len: n,
                starts_frame: false,
                data: self.data_frame,
                ends_message,
            });
        }
        let mut cursor = Cursor::new(&data[..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(Step::Need),
            Err(_) => return Err(Violation::protocol("reserved opcode")),
        };
        let header_len = cursor.position() as usize;
        self.check_header(&header, len)?;
        if let OpCode::Control(Control::Close) = header.opcode {
            let total = header_len + len as usize;
            if data.len() < total {
                return Ok(Step::Need);
            }
            let mut payload = [0u8; 125];
            let payload = &mut payload[..len as usize];
            payload.copy_from_slice(&data[header_len..total]);
            if let Some(mask) = header.mask {
                apply_mask(payload, mask, 0);
            }
            let (code, reason) = parse_close(payload)?;
            return Ok(Step::Close {
                len: total,
                code,
                reason,
            });
        }
        let mut text_frame = false;
        let mut final_data = false;
        if let OpCode::Data(kind) = header.opcode {
            let text = match (kind, self.message) {
                (Data::Continue, Some(text)) => text,
                (Data::Continue, None) => {
                    return Err(Violation::protocol("continuation frame outside a message"))
                }
                (_, Some(_)) => {
                    return Err(Violation::protocol(
                        "new message before the fragmented one ended",
                    ))
                }
                (Data::Text, None) => true,
                (_, None) => false,
            };
            let message_len = if self.message.is_some() {
                self.message_len.saturating_add(len)
            } else {
                len
            };
            if message_len > self.max_message {
                return Err(Violation {
                    code: 1009,
                    reason: "message too big",
                });
            }
            self.message_len = message_len;
            self.message = Some(text);
            text_frame = text;
            final_data = header.is_final;
        }
        // The frame is accepted from here on.
        self.remaining = len;
        self.offset = 0;
        self.mask = header.mask;
        self.text_frame = text_frame;
        self.final_data = final_data;
        self.data_frame = matches!(header.opcode, OpCode::Data(_));
        let n = (len.min((data.len() - header_len) as u64)) as usize;
        if let Err(v) = self.payload(&mut data[header_len..header_len + n]) {
            // Nothing of this frame was passed: its receiver is not inside it.
            self.remaining = 0;
            return Err(v);
        }
        Ok(Step::Pass {
            len: header_len + n,
            starts_frame: true,
            data: self.data_frame,
            ends_message: self.frame_done()?,
        })
    }

    fn check_header(&self, header: &FrameHeader, len: u64) -> Result<(), Violation> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(Violation::protocol(
                "reserved bits set with no extension agreed",
            ));
        }
        match (self.sender, header.mask.is_some()) {
            (Sender::Client, false) => return Err(Violation::protocol("unmasked client frame")),
            (Sender::Server, true) => return Err(Violation::protocol("masked server frame")),
            _ => {}
        }
        if let OpCode::Control(_) = header.opcode {
            if !header.is_final {
                return Err(Violation::protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(Violation::protocol("control frame over 125 bytes"));
            }
        }
        Ok(())
    }

    /// Checks a chunk of the current frame's payload and counts it passed.
    fn payload(&mut self, chunk: &mut [u8]) -> Result<(), Violation> {
        if self.text_frame && !chunk.is_empty() {
            let ok = match self.mask {
                Some(mask) => {
                    apply_mask(chunk, mask, self.offset);
                    let ok = self.utf8.feed(chunk);
                    apply_mask(chunk, mask, self.offset);
                    ok
                }
                None => self.utf8.feed(chunk),
            };
            if !ok {
                return Err(Violation {
                    code: 1007,
                    reason: "invalid UTF-8 in a text message",
                });
            }
        }
        self.offset += chunk.len() as u64;
        self.remaining -= chunk.len() as u64;
        Ok(())
    }

    /// After a chunk: whether the current frame ended a message.
    fn frame_done(&mut self) -> Result<bool, Violation> {
        if self.remaining > 0 || !self.final_data {
            return Ok(false);
        }
        self.final_data = false;
        let text = self.message.take() == Some(true);
        if text && !self.utf8.finish() {
            return Err(Violation {
                code: 1007,
                reason: "text message ends inside a UTF-8 sequence",
            });
        }
        Ok(true)
    }
}

/// A close frame's code and reason.
fn parse_close(payload: &[u8]) -> Result<(Option<u16>, String), Violation> {
    match payload {
        [] => Ok((None, String::new())),
        [_] => Err(Violation::protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(Violation::protocol("close code not allowed on the wire"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Violation {
                code: 1007,
                reason: "invalid UTF-8 in a close reason",
            })?;
            Ok((Some(code), reason.to_owned()))
        }
    }
}

/// Cuts a close reason to the 123 bytes a close frame holds, at a character boundary.
pub fn cut_reason(reason: &str) -> &str {
    if reason.len() <= 123 {
        return reason;
    }
    let mut end = 123;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// A close frame as the gateway writes it: masked with `mask` when it goes to an upstream
/// (the gateway is its client).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let reason = cut_reason(reason);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    control_frame(0x8, &payload, mask)
}

/// A ping frame with `payload` (at most 125 bytes).
pub fn ping_frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    control_frame(0x9, payload, mask)
}

fn control_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    debug_assert!(payload.len() <= 125);
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(0x80 | opcode);
    let len = payload.len() as u8;
    match mask {
        None => {
            out.push(len);
            out.extend_from_slice(payload);
        }
        Some(mask) => {
            out.push(0x80 | len);
            out.extend_from_slice(&mask);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], mask, 0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a peer writes it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n < 65536 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(mask) = mask {
            out.extend_from_slice(&mask);
        }
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(mask) = mask {
            apply_mask(&mut out[start..], mask, 0);
        }
        out
    }

    const M: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    /// Feeds `bytes` in chunks of `chunk`, as reads would; returns what was passed (which must
    /// equal the input up to a close) and the first close, violation or message count.
    fn run(
        sender: Sender,
        bytes: &[u8],
        chunk: usize,
    ) -> (Vec<u8>, usize, Result<Option<Step>, Violation>) {
        let mut c = FrameChecker::new(sender, 1 << 20);
        let mut buf = Vec::new();
        let mut p = 0;
        let mut fed = 0;
        let mut messages = 0;
        loop {
            match c.step(&mut buf[p..]) {
                Ok(Step::Pass {
                    len, ends_message, ..
                }) => {
                    p += len;
                    messages += ends_message as usize;
                }
                Ok(close @ Step::Close { .. }) => {
                    return (buf[..p].to_vec(), messages, Ok(Some(close)))
                }
                Ok(Step::Need) => {
                    if fed == bytes.len() {
                        return (buf[..p].to_vec(), messages, Ok(None));
                    }
                    let n = chunk.min(bytes.len() - fed);
                    buf.extend_from_slice(&bytes[fed..fed + n]);
                    fed += n;
                }
                Err(v) => return (buf[..p].to_vec(), messages, Err(v)),
            }
        }
    }

    #[test]
    fn messages_pass_unchanged_whatever_the_reads() {
        let text = "héllo wörld ✓ 𝄞".as_bytes();
        let mut stream = frame(true, 1, text, M);
        stream.extend(frame(false, 2, &[0, 1, 2], M));
        stream.extend(frame(true, 9, b"ping", M));
        stream.extend(frame(true, 0, &[3, 4], M));
        stream.extend(frame(false, 1, &text[..7], M));
        stream.extend(frame(true, 0, &text[7..], M));
        stream.extend(frame(true, 2, &vec![7u8; 70_000], M));
        for chunk in [1, 2, 3, 5, 13, 4096, 1 << 20] {
            let (passed, messages, end) = run(Sender::Client, &stream, chunk);
            assert_eq!(end, Ok(None), "chunk {chunk}");
            assert_eq!(passed, stream, "chunk {chunk}");
            assert_eq!(messages, 4, "chunk {chunk}");
        }
    }

    #[test]
    fn utf8_is_checked_across_frames_and_reads() {
        let bad = [b'a', 0xE2, 0x28, 0xA1];
        for chunk in [1, 2, 100] {
            let (_, _, end) = run(Sender::Server, &frame(true, 1, &bad, None), chunk);
            assert_eq!(end.unwrap_err().code, 1007, "chunk {chunk}");
            // A sequence split between two frames of one message is fine...
            let euro = "€".as_bytes();
            let mut split = frame(false, 1, &euro[..1], M);
            split.extend(frame(true, 0, &euro[1..], M));
            assert_eq!(run(Sender::Client, &split, chunk).2, Ok(None));
            // ...but not one cut by the message's end.
            let cut = frame(true, 1, &euro[..2], M);
            assert_eq!(run(Sender::Client, &cut, chunk).2.unwrap_err().code, 1007);
        }
        // Binary messages are not text.
        assert_eq!(
            run(Sender::Server, &frame(true, 2, &bad, None), 1).2,
            Ok(None)
        );
    }

    #[test]
    fn close_frames_are_read_whole_and_checked() {
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut stream = frame(true, 2, b"x", M);
        stream.extend(frame(true, 8, &payload, M));
        let (passed, _, end) = run(Sender::Client, &stream, 1);
        assert_eq!(passed, frame(true, 2, b"x", M));
        assert_eq!(
            end,
            Ok(Some(Step::Close {
                len: 2 + 4 + 5,
                code: Some(4000),
                reason: "bye".into()
            }))
        );
        let empty = frame(true, 8, &[], None);
        assert!(matches!(
            run(Sender::Server, &empty, 1).2,
            Ok(Some(Step::Close { code: None, .. }))
        ));
        for bad in [&[3u8][..], &1005u16.to_be_bytes(), &999u16.to_be_bytes()] {
            assert_eq!(
                run(Sender::Server, &frame(true, 8, bad, None), 9)
                    .2
                    .unwrap_err()
                    .code,
                1002
            );
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xFF);
        assert_eq!(
            run(Sender::Server, &frame(true, 8, &bad_reason, None), 9)
                .2
                .unwrap_err()
                .code,
            1007
        );
    }

    #[test]
    fn what_an_intermediary_must_refuse() {
        let cases: Vec<(Sender, Vec<u8>, u16)> = vec![
            (Sender::Server, frame(true, 3, b"", None), 1002),
            (Sender::Server, frame(true, 0xB, b"", None), 1002),
            (Sender::Client, frame(true, 2, b"x", None), 1002),
            (Sender::Server, frame(true, 2, b"x", M), 1002),
            (Sender::Server, frame(false, 9, b"", None), 1002),
            (Sender::Server, frame(true, 9, &[0; 126], None), 1002),
            (Sender::Server, frame(true, 0, b"x", None), 1002),
            (
                Sender::Server,
                [frame(false, 1, b"x", None), frame(true, 2, b"y", None)].concat(),
                1002,
            ),
            (
                Sender::Server,
                {
                    let mut f = frame(true, 2, b"x", None);
                    f[0] |= 0x40;
                    f
                },
                1002,
            ),
            (
                Sender::Server,
                frame(true, 2, &vec![0; (1 << 20) + 1], None),
                1009,
            ),
        ];
        for (i, (sender, bytes, code)) in cases.into_iter().enumerate() {
            assert_eq!(run(sender, &bytes, 7).2.unwrap_err().code, code, "case {i}");
        }
    }

    #[test]
    fn frames_the_gateway_writes_parse_back() {
        let reason = "é".repeat(100);
        let cut = cut_reason(&reason);
        assert!(cut.len() <= 123 && reason.starts_with(cut));
        let close = close_frame(1014, &reason, M);
        let end = run(Sender::Client, &close, 3).2;
        assert_eq!(
            end,
            Ok(Some(Step::Close {
                len: close.len(),
                code: Some(1014),
                reason: cut.into()
            }))
        );
        let ping = ping_frame(b"hb", None);
        assert_eq!(run(Sender::Server, &ping, 1).0, ping);
    }
}
