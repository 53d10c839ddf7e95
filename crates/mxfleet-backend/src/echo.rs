//! The echo backend: answers with the user's last message, a word at a time.

use futures_util::stream;

use crate::{Backend, ChatRequest, TextStream};

/// Answers with `prefix` followed by the last user message.
#[derive(Debug, Clone)]
pub struct EchoBackend {
    prefix: String,
}

impl EchoBackend {
    /// An echo backend putting `prefix` before each answer.
    pub fn new(prefix: String) -> Self {
        Self { prefix }
    }
}

impl Backend for EchoBackend {
    fn kind(&self) -> &'static str {
        "echo"
    }

    fn stream(&self, request: ChatRequest) -> TextStream {
        let answer = format!("{}{}", self.prefix, request.last_user_message());

        // Word-sized deltas so consumers see a real stream.
        let deltas: Vec<_> = answer
            .split_inclusive(' ')
            .map(|w| Ok(w.to_owned()))
            .collect();
        Box::pin(stream::iter(deltas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChatMessage, Role, collect};

    #[tokio::test]
    async fn echoes_the_last_user_message() {
        let backend = EchoBackend::new("echo: ".into());
        let request = ChatRequest {
            messages: vec![
                ChatMessage {
                    role: Role::User,
                    content: "first".into(),
                    ..ChatMessage::default()
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: "ignored".into(),
                    ..ChatMessage::default()
                },
                ChatMessage {
                    role: Role::User,
                    content: "hello  there world".into(),
                    ..ChatMessage::default()
                },
            ],
            ..ChatRequest::default()
        };

        assert_eq!(
            collect(&backend, request).await.ok().as_deref(),
            Some("echo: hello  there world")
        );
    }
}
