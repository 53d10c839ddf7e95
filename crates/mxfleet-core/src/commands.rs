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
}

/// The help text.
pub(crate) const HELP: &str = "Commands:\n\
- `!help` shows this help\n\
- `!new` starts a new conversation (forgets the earlier messages of this room or thread)\n\
- `!status` shows this bot's state, backend and model\n\
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
    }
}
