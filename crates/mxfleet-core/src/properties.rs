//! Property tests over arbitrary Unicode for the text decisions a stranger's message reaches:
//! command parsing, mention detection, display-name sanitising and the action-block splitter.
//! None may panic on any input, and each keeps the promise its doc comment makes.

use proptest::prelude::*;

use crate::{
    gate::{Me, is_mentioned, sanitize_display_name},
    testing::{said, user},
    turn::{
        actions::{Action, ActionSplitter},
        commands::{Command, parse},
    },
};

/// Any text, weighted towards the characters that trip byte-offset code: case folds that change
/// length (Kelvin sign, dotted capital I, sharp s, final sigma), combining marks, bidi controls,
/// fences and the characters commands and mentions look for.
fn text() -> impl Strategy<Value = String> {
    let tricky = prop::sample::select(vec![
        'K', 'K', 'İ', 'ß', 'Σ', 'ς', '\u{301}', '\u{202e}', '\u{200b}', '!', ':', ',', '@', '`',
        '\n', ' ', '>', '~', 'é', '😀',
    ]);
    prop::collection::vec(
        prop_oneof![3 => any::<char>(), 2 => tricky, 3 => prop::char::range('a', 'z')],
        0..80,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// A display name someone might pick, tricky characters included.
fn name() -> impl Strategy<Value = String> {
    text().prop_map(|t| t.chars().take(24).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn command_parsing_never_panics(display in name(), rest in text(), addressed in any::<bool>()) {
        // Addressed messages start with the name (as its owner spelled it), so the prefix
        // skipping runs on every tricky character.
        let body = if addressed { format!("{display}{rest}") } else { rest };
        let _ = parse(&body, "@bot:hs", Some(&display));
        let _ = parse(&body, &display, None);
    }

    #[test]
    fn a_command_after_the_bot_s_name_is_found(display in "[^\\s:,!][^:,!\n]{0,20}", word in "[a-z]{1,10}") {
        let display = display.trim_end().to_owned();
        let body = format!("{display}: !{word}");
        // The name is skipped only where lower-casing keeps its length; elsewhere it must not
        // panic and must not invent a command.
        prop_assume!(body.to_lowercase().starts_with(&display.to_lowercase()));
        prop_assume!(display.to_lowercase().len() == display.len());
        let expected = match word.as_str() {
            "help" => Command::Help,
            "new" | "reset" => Command::New,
            "status" => Command::Status,
            _ => Command::Unknown(word.clone()),
        };
        prop_assert_eq!(parse(&body, "@bot:hs", Some(&display)), Some(expected));
    }

    #[test]
    fn mention_detection_never_panics(body in text(), display in name(), html in text()) {
        let me = Me { user_id: user("@bot:hs"), display_name: Some(display) };
        let mut message = said("!r:hs", "$e", "@human:hs", &body);
        message.formatted_body = Some(html);
        let _ = is_mentioned(&me, true, &message);
    }

    #[test]
    fn the_bot_s_user_id_anywhere_outside_a_quote_is_a_mention(before in text(), after in text()) {
        prop_assume!(!before.starts_with('>'));
        let me = Me { user_id: user("@bot:hs"), display_name: None };
        let body = format!("{} @bot:hs {after}", before.replace('\n', " "));
        prop_assert!(is_mentioned(&me, false, &said("!r:hs", "$e", "@human:hs", &body)));
    }

    #[test]
    fn a_sanitised_display_name_is_short_printable_and_never_empty(display in name()) {
        let clean = sanitize_display_name(Some(&display), &user("@bot:hs"));
        prop_assert!(!clean.is_empty());
        prop_assert!(clean.chars().count() <= 48);
        let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{200b}' | '\u{202e}' | '<' | '>');
        prop_assert!(!clean.chars().any(unsafe_char), "{:?}", clean);
    }

    #[test]
    fn the_action_splitter_shows_the_same_text_however_the_answer_is_chunked(
        before in text(),
        block in prop::sample::select(vec!["", "```poll\nWhich?\n- a\n- b\n```\n", "```location\ngeo:1,2\nHere\n```", "```poll\n"]),
        after in text(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let answer = format!("{before}{block}{after}");
        let whole = split(&[answer.as_str()]);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(answer.len() + 1)).collect();
        at.push(0);
        at.push(answer.len());
        at.sort_unstable();
        at.dedup();
        // Chunks arrive on character boundaries (they are `String`s).
        let chunks: Vec<&str> = at.windows(2).filter_map(|w| answer.get(w[0]..w[1])).collect();
        prop_assume!(chunks.concat() == answer);
        prop_assert_eq!(split(&chunks), whole.clone());
        if !answer.contains("```") {
            prop_assert_eq!(whole, (answer, None));
        }
    }
}

/// The text an [`ActionSplitter`] shows for `chunks`, and the action it found.
fn split(chunks: &[&str]) -> (String, Option<Action>) {
    let mut splitter = ActionSplitter::default();
    let mut shown: String = chunks.iter().map(|c| splitter.push(c)).collect();
    let (tail, action) = splitter.finish();
    shown.push_str(&tail);
    (shown, action)
}
