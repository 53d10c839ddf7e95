//! A server-sent-events decoder: bytes in, `data:` payloads out.
//!
//! Only what chat-completion streams use: `data:` lines (joined with `\n` when an event has
//! several), events separated by a blank line, comments (`:`) and other fields ignored. Chunks
//! may split anywhere, including inside a UTF-8 character.

/// Incremental SSE decoder.
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    buffer: Vec<u8>,
    data: Option<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the data of every event completed by them.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    events.push(data);
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
        }
        events
    }

    /// Ends the input; returns a last event not followed by a blank line.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let mut events = self.push(&rest);
        events.extend(self.push(b"\n\n"));
        events.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_arbitrary_chunks() {
        let input =
            "data: {\"a\":1}\n\n: comment\nevent: x\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n";
        for split in 0..input.len() {
            let mut d = SseDecoder::default();
            let mut out = d.push(&input.as_bytes()[..split]);
            out.extend(d.push(&input.as_bytes()[split..]));
            assert_eq!(
                out,
                ["{\"a\":1}", "line1\nline2", "[DONE]"],
                "split at {split}"
            );
        }
    }

    #[test]
    fn keeps_multibyte_characters_split_between_chunks() {
        let input = "data: héllo 👀\r\n\r\n".as_bytes();
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for b in input {
            out.extend(d.push(std::slice::from_ref(b)));
        }
        assert_eq!(out, ["héllo 👀"]);
    }

    #[test]
    fn finish_flushes_an_unterminated_event() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: tail").is_empty());
        assert_eq!(d.finish().as_deref(), Some("tail"));
    }
}
