//! `!` commands and `verify …` words: parsed (purely) from a message that passed the gate,
//! answered directly, without the backend.

use mxfleet_matrix::matrix_sdk::ruma::UserId;
use mxfleet_message::InboundMessage;
use ractor::ActorRef;
use tracing::warn;

use super::{context::TurnContext, routing::RouteBackend};
use crate::{
    crypto::{CryptoMsg, VerifyWord},
    error::AccountError,
    texts,
};

/// How long a `verify …` word may wait for the crypto actor (it talks to the homeserver).
const VERIFY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

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

/// The command in `body`, if it is one. A leading mention of the bot (`Bot: !new`, `@bot:hs
/// !new`) is skipped first.
pub(crate) fn parse(body: &str, user_id: &str, display_name: Option<&str>) -> Option<Command> {
    let mut text = body.trim_start();
    let lower = text.to_lowercase();
    for prefix in [Some(user_id), display_name].into_iter().flatten() {
        let prefix = prefix.to_lowercase();
        if !prefix.is_empty() && lower.starts_with(&prefix) {
            // The offset is taken from the lower-cased copy: it is only a valid cut of the
            // original if it falls on one of its character boundaries.
            text = text
                .get(prefix.len()..)
                .unwrap_or(text)
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

/// The answer to `command`, sent in `key`'s conversation on `route`.
pub(crate) async fn run(
    ctx: &TurnContext,
    command: &Command,
    key: &str,
    message: &InboundMessage,
    route: &RouteBackend,
) -> String {
    match command {
        Command::Help => texts::HELP.to_owned(),
        Command::Verify(word) => verify(ctx, &message.sender, *word).await,
        Command::Unknown(word) => texts::unknown_command(word),
        Command::New => {
            let reset = ctx
                .store
                .reset_memory(&ctx.account, key, message.origin_server_ts_ms)
                .await;
            match reset {
                Ok(()) => texts::MEMORY_RESET.to_owned(),
                Err(e) => {
                    warn!(error = %e, "could not reset the conversation");
                    texts::MEMORY_RESET_FAILED.to_owned()
                }
            }
        }
        Command::Status => {
            let state = ctx
                .board
                .account(&ctx.account)
                .map_or("unknown".to_owned(), |s| s.state.to_string());
            let remembered = ctx
                .store
                .memory(&ctx.account, key)
                .await
                .map(|m| m.turns.len())
                .unwrap_or(0);
            texts::status(&texts::StatusFacts {
                account: &ctx.account,
                state,
                backend: (&route.name, route.backend.kind()),
                model: route.model.as_deref(),
                remembered,
                conversation: &ctx.spec.conversation,
            })
        }
    }
}

/// Hands a `verify …` word to the `CryptoActor`; returns what to answer.
async fn verify(ctx: &TurnContext, user: &UserId, word: VerifyWord) -> String {
    let Some(crypto) = ctx.children.crypto.get() else {
        return texts::NO_DEVICE_TO_VERIFY.into();
    };
    match ask_crypto(&crypto, user, word).await {
        Ok(text) => text,
        Err(e) => {
            warn!(error = %e, "a verify word was not handled");
            texts::VERIFICATION_UNAVAILABLE.into()
        }
    }
}

async fn ask_crypto(
    crypto: &ActorRef<CryptoMsg>,
    user: &UserId,
    word: VerifyWord,
) -> Result<String, AccountError> {
    let user = user.to_owned();
    let asked = crypto.call(
        |reply| CryptoMsg::Word { user, word, reply },
        Some(VERIFY_DEADLINE),
    );
    crate::children::answer("crypto actor", VERIFY_DEADLINE, asked.await)
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

    #[test]
    fn a_leading_name_that_folds_to_another_length_does_not_panic() {
        // The Kelvin sign K (3 bytes) lower-cases to k (1 byte): the display name "Mike" matches
        // "MiKe" in the folded copy at an offset that is not a boundary of the original.
        let parse = |b: &str| parse(b, "@bot:hs", Some("Mike"));
        assert_eq!(parse("Mi\u{212A}e: hi"), None);
        assert_eq!(parse("Mi\u{212A}e: !help"), None);
        assert_eq!(parse("İstanbul !new"), None);
    }
}
