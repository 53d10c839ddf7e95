//! `!` commands: parsed from a message that passed the gate, answered without the backend.

/// A command the bot understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `!help`
    Help,
    /// `!new`: forget the conversation.
    New,
    /// `!status`: account state, backend, model.
    Status,
    /// Anything else starting with `!`: answered with the help text.
    Unknown(String),
    /// `verify yes|no|show|cancel`: drives a device verification.
    Verify(VerifyWord),
}

/// The words of a verification by chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerifyWord {
    /// The emoji match: confirm.
    Yes,
    /// They do not: cancel as a mismatch.
    No,
    /// Show the emoji again.
    Show,
    /// Stop the verification.
    Cancel,
}

/// The help text.
pub(crate) const HELP: &str = "Commands:\n\
- `!help` shows this help\n\
- `!new` starts a new conversation (forgets the earlier messages of this room or thread)\n\
- `!status` shows this bot's state, backend and model\n\
- `verify yes`, `verify no`, `verify show`, `verify cancel` drive a device verification you started\n\
\n\
Anything else is answered by the AI backend.";

/// The command in `body`, if it is one. A leading mention of the bot (`Bot: !new`, `@bot:hs
/// !new`) is skipped first.
pub(crate) fn parse(body: &str, user_id: &str, display_name: Option<&str>) -> Option<Command> {
    let mut text = body.trim_start();
    let lower = text.to_lowercase();
    for prefix in [Some(user_id), display_name].into_iter().flatten() {
        let prefix = prefix.to_lowercase();
        if !prefix.is_empty() && lower.starts_with(&prefix) {
            text = text[prefix.len()..]
                .trim_start_matches([':', ','])
                .trim_start();
            break;
        }
    }
    let lower_text = text.trim().to_lowercase();
    if let Some(word) = lower_text.strip_prefix("verify ") {
        let word = match word.trim() {
            "yes" => VerifyWord::Yes,
            "no" => VerifyWord::No,
            "show" => VerifyWord::Show,
            "cancel" => VerifyWord::Cancel,
            _ => return None,
        };
        return Some(Command::Verify(word));
    }
    let rest = text.strip_prefix('!')?;
    if rest.starts_with(char::is_whitespace) {
        return None;
    }

    let word: String = rest
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_lowercase();
    if word.is_empty() {
        return None;
    }
    Some(match word.as_str() {
        "help" => Command::Help,
        "new" | "reset" => Command::New,
        "status" => Command::Status,
        _ => Command::Unknown(word.chars().take(32).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_found_after_an_optional_mention() {
        let p = |b: &str| parse(b, "@bot:hs", Some("Helper"));
        assert_eq!(p("!help"), Some(Command::Help));
        assert_eq!(p("  !NEW please"), Some(Command::New));
        assert_eq!(p("Helper: !status"), Some(Command::Status));
        assert_eq!(p("@bot:hs !new"), Some(Command::New));
        assert_eq!(
            p("!frobnicate x"),
            Some(Command::Unknown("frobnicate".into()))
        );
        assert_eq!(p("hello !help"), None);
        assert_eq!(p("!"), None);
        assert_eq!(p("! help"), None);
        assert_eq!(p("verify yes"), Some(Command::Verify(VerifyWord::Yes)));
        assert_eq!(
            p("Helper: Verify SHOW"),
            Some(Command::Verify(VerifyWord::Show))
        );
        assert_eq!(
            p("verify cancel "),
            Some(Command::Verify(VerifyWord::Cancel))
        );
        assert_eq!(p("verify the facts please"), None);
    }
}
