//! Turning a backend's Markdown into a Matrix message, and cutting long answers into parts.
//!
//! The plain `body` is the Markdown itself (readable as it is); `formatted_body` is the Markdown
//! rendered by pulldown-cmark and sanitised by ammonia down to the HTML subset the Matrix spec
//! recommends. Text without any markup gets no `formatted_body` at all.
//!
//! Long answers are cut on paragraph or code-block boundaries; a code block longer than a part
//! is closed at the cut and reopened (same fence and language) in the next part, so no part ever
//! ends inside an open code block.

use std::{collections::HashSet, sync::OnceLock};

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd, html};

/// A message ready to send: plain body plus optional sanitised HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formatted {
    /// The plain-text body (the Markdown source).
    pub body: String,
    /// Sanitised Matrix HTML, when the text has markup.
    pub html: Option<String>,
}

/// One cut of a long text: the finished head and how to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The part to send, with any open code block closed.
    pub head: String,
    /// How many bytes of the input the head used up.
    pub consumed: usize,
    /// What the next part starts with (the reopened code fence), if anything.
    pub carry: String,
}

/// Renders `markdown` for Matrix.
pub fn render_markdown(markdown: &str) -> Formatted {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let events: Vec<Event<'_>> = Parser::new_ext(markdown, options).collect();
    let plain = events.iter().all(|e| {
        matches!(
            e,
            Event::Start(Tag::Paragraph)
                | Event::End(TagEnd::Paragraph)
                | Event::Text(_)
                | Event::SoftBreak
        )
    }) && events
        .iter()
        .filter(|e| matches!(e, Event::Start(Tag::Paragraph)))
        .count()
        <= 1;
    if plain {
        return Formatted {
            body: markdown.to_owned(),
            html: None,
        };
    }
    let mut rendered = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut rendered, events.into_iter());
    let clean = sanitizer().clean(&rendered).to_string();
    Formatted {
        body: markdown.to_owned(),
        html: Some(clean.trim_end().to_owned()),
    }
}

/// Splits `text` into parts of at most `max` bytes (see [`cut`]).
pub fn split_markdown(text: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.to_owned();
    while rest.len() > max {
        let c = cut(&rest, max);
        if !c.head.is_empty() {
            parts.push(c.head);
        }
        rest = format!("{}{}", c.carry, &rest[c.consumed..]);
    }
    if !rest.trim().is_empty() || parts.is_empty() {
        parts.push(rest);
    }
    parts
}

/// Cuts the head off `text` (longer than `max` bytes), preferring, within the second half of the
/// window, the end of a paragraph or code block, then any line end outside code, then a line end
/// inside code (closing and reopening the fence), then a space, then any character boundary.
pub fn cut(text: &str, max: usize) -> Cut {
    let max = max.max(16);
    let mut fence: Option<Fence> = None;
    // (end offset, priority, open fence at that point)
    let mut best: Option<(usize, u8, Option<Fence>)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let end = offset + line.len();
        let trimmed = line.trim();
        let was_open = fence.is_some();
        fence = match fence.take() {
            None => Fence::open(line),
            Some(f) if f.closes(trimmed) => {
                consider(&mut best, end, 4, None, max);
                None
            }
            Some(f) => Some(f),
        };
        if line.ends_with('\n') {
            let priority = match &fence {
                Some(_) => 1,
                None if trimmed.is_empty() => 4,
                None => 2,
            };
            let reserve = fence.as_ref().map_or(0, |f| f.marker.len() + 1);
            // Right after a fence opens, a cut would leave an empty code block (and make no
            // progress when that fence is the carried-over one).
            let opened_here = fence.is_some() && !was_open;
            if end + reserve <= max && !opened_here {
                consider(&mut best, end, priority, fence.clone(), max);
            }
        }
        offset = end;
        if offset > max {
            break;
        }
    }
    if let Some((end, _, open)) = best {
        return finish_cut(text, end, open, max);
    }
    // One very long line: a space, else any character boundary.
    let window = mxfleet_message::truncate_at_char_boundary(text, max.saturating_sub(8));
    let end = window
        .rfind(' ')
        .filter(|&i| i > window.len() / 2)
        .map_or(window.len(), |i| i + 1);
    let open = open_fence_at(text, end);
    finish_cut(text, end.max(1), open, max)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fence {
    marker: String,
    opening: String,
}

impl Fence {
    /// The fence `line` opens, if it opens one.
    fn open(line: &str) -> Option<Fence> {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let t = line.trim_start_matches(' ');
        let ch = t.chars().next().filter(|c| *c == '`' || *c == '~')?;
        let run = t.chars().take_while(|c| *c == ch).count();
        if indent > 3 || run < 3 {
            return None;
        }
        let opening = if line.ends_with('\n') {
            line.to_owned()
        } else {
            format!("{line}\n")
        };
        Some(Fence {
            marker: ch.to_string().repeat(run),
            opening,
        })
    }

    fn closes(&self, trimmed: &str) -> bool {
        let ch = self.marker.chars().next().unwrap_or('`');
        trimmed.len() >= self.marker.len() && trimmed.chars().all(|c| c == ch)
    }
}

fn consider(
    best: &mut Option<(usize, u8, Option<Fence>)>,
    end: usize,
    priority: u8,
    open: Option<Fence>,
    max: usize,
) {
    if end > max || end == 0 {
        return;
    }
    // Cuts in the first third of the window waste too much of the part; they only win when
    // there is nothing else.
    let rank = |end: usize, priority: u8| (end * 3 >= max, priority, end);
    if best
        .as_ref()
        .is_none_or(|(e, p, _)| rank(end, priority) > rank(*e, *p))
    {
        *best = Some((end, priority, open));
    }
}

fn finish_cut(text: &str, end: usize, open: Option<Fence>, max: usize) -> Cut {
    // A fence is only closed and carried over when that fits the part and the next part still
    // moves on; a pathological fence (a marker or opening line nearly as long as a part) is cut
    // like plain text instead.
    let open = open.filter(|f| f.opening.len() < end && end + 1 + f.marker.len() <= max);
    let mut head = text[..end].to_owned();
    let carry = match open {
        Some(f) => {
            if !head.ends_with('\n') {
                head.push('\n');
            }
            head.push_str(&f.marker);
            f.opening
        }
        None => String::new(),
    };
    Cut {
        head: head.trim_end().to_owned(),
        consumed: end,
        carry,
    }
}

/// The code fence open at byte `end` of `text`, if any.
fn open_fence_at(text: &str, end: usize) -> Option<Fence> {
    let mut fence = None;
    let mut offset = 0;
    for line in text[..end].split_inclusive('\n') {
        offset += line.len();
        if !line.ends_with('\n') && offset == end {
            // The cut line itself: a fence only counts once its line is complete.
            break;
        }
        fence = match fence.take() {
            None => Fence::open(line),
            Some(f) if f.closes(line.trim()) => None,
            Some(f) => Some(f),
        };
    }
    fence
}

/// The ammonia policy for Matrix HTML (the spec's recommended tag and attribute lists).
fn sanitizer() -> &'static ammonia::Builder<'static> {
    static BUILDER: OnceLock<ammonia::Builder<'static>> = OnceLock::new();
    BUILDER.get_or_init(|| {
        let tags: HashSet<&str> = [
            "font",
            "del",
            "s",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "blockquote",
            "p",
            "a",
            "ul",
            "ol",
            "sup",
            "sub",
            "li",
            "b",
            "i",
            "u",
            "strong",
            "em",
            "strike",
            "code",
            "hr",
            "br",
            "div",
            "table",
            "thead",
            "tbody",
            "tr",
            "th",
            "td",
            "caption",
            "pre",
            "span",
            "details",
            "summary",
        ]
        .into_iter()
        .collect();
        let mut builder = ammonia::Builder::empty();
        builder
            .tags(tags)
            .add_tag_attributes("a", ["href"])
            .add_tag_attributes("ol", ["start"])
            .add_tag_attributes("code", ["class"])
            .add_tag_attributes(
                "span",
                ["data-mx-color", "data-mx-bg-color", "data-mx-spoiler"],
            )
            .add_tag_attributes("font", ["data-mx-color", "data-mx-bg-color", "color"])
            .url_schemes(
                ["http", "https", "ftp", "mailto", "magnet", "matrix"]
                    .into_iter()
                    .collect(),
            )
            .link_rel(Some("noopener"))
            .attribute_filter(|element, attribute, value| {
                if element == "code" && attribute == "class" {
                    let ok = value.starts_with("language-")
                        && value[9..]
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+-_#.".contains(c));
                    return ok.then_some(value.into());
                }
                Some(value.into())
            });
        builder
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_has_no_html_and_markup_is_rendered() {
        assert_eq!(render_markdown("just words\nand more").html, None);
        let f = render_markdown("**bold** and `code`");
        assert_eq!(f.body, "**bold** and `code`");
        assert_eq!(
            f.html.as_deref(),
            Some("<p><strong>bold</strong> and <code>code</code></p>")
        );
        let f = render_markdown("```rust\nfn main() {}\n```");
        assert_eq!(
            f.html.as_deref(),
            Some("<pre><code class=\"language-rust\">fn main() {}\n</code></pre>")
        );
    }

    #[test]
    fn dangerous_html_is_removed() {
        let f = render_markdown(
            "hi <script>alert(1)</script> <img src=x onerror=alert(1)> [x](javascript:alert(1)) <a href=\"https://ok\" onclick=\"x\">ok</a>\n\n- item",
        );
        let html = f.html.unwrap_or_default();
        for bad in ["<script", "onerror", "javascript:", "onclick", "<img"] {
            assert!(!html.contains(bad), "{bad} survived in {html}");
        }
        assert!(html.contains("href=\"https://ok\""), "{html}");
        assert!(html.contains("<li>item</li>"), "{html}");
    }

    #[test]
    fn splits_prefer_paragraphs_and_never_leave_a_code_block_open() {
        let para = "word ".repeat(30);
        let code: String = (0..60).map(|i| format!("let x{i} = {i};\n")).collect();
        let text = format!("{para}\n\n{para}\n\n```rust\n{code}```\n\n{para}");
        for max in [200, 300, 500, 1000] {
            let parts = split_markdown(&text, max);
            assert!(parts.len() > 1);
            for p in &parts {
                assert!(p.len() <= max, "part of {} bytes > {max}", p.len());
                let fences = p
                    .lines()
                    .filter(|l| l.trim_start().starts_with("```"))
                    .count();
                assert_eq!(fences % 2, 0, "unbalanced fences in part:\n{p}");
            }
            // Nothing is lost: every code line and every word arrives once.
            let joined = parts.join("\n");
            for i in 0..60 {
                assert_eq!(joined.matches(&format!("let x{i} = {i};")).count(), 1);
            }
            assert_eq!(joined.matches("word").count(), 90);
        }
        // A paragraph boundary inside the window is preferred over a line end.
        let text = format!("{}\n\n{}", "a".repeat(150), "b ".repeat(100));
        let c = cut(&text, 250);
        assert_eq!(c.head, "a".repeat(150));
        assert!(c.carry.is_empty());
    }

    #[test]
    fn a_cut_inside_code_reopens_the_fence_with_its_language() {
        let code: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let text = format!("```python\n{code}```\n");
        let c = cut(&text, 120);
        assert!(c.head.ends_with("```") && c.head.starts_with("```python"));
        assert_eq!(c.carry, "```python\n");
        let rest = format!("{}{}", c.carry, &text[c.consumed..]);
        assert!(rest.starts_with("```python\nline "));
    }

    #[test]
    fn one_huge_line_is_cut_at_a_space_or_a_char_boundary() {
        let text = "é".repeat(300);
        let parts = split_markdown(&text, 101);
        assert!(parts.iter().all(|p| p.len() <= 101));
        assert_eq!(parts.concat(), text);
        let words = "abc ".repeat(100);
        let parts = split_markdown(&words, 64);
        assert_eq!(parts.join(" ").split_whitespace().count(), 100);
    }

    #[test]
    fn a_fence_opening_nearly_as_long_as_a_part_does_not_stall_the_split() {
        // Found by the property tests: the carried fence took the whole part, and the split
        // looped forever, growing without bound.
        let text = "```\u{1d3b6}\n s6d32Xsjy9Uu5faOUd\u{db19e}2\n\n\n %";
        let parts = split_markdown(text, 17);
        assert!(parts.iter().all(|p| p.len() <= 17), "{parts:?}");
        let long_marker = format!("{}\n{}\n", "`".repeat(12), "code ".repeat(10));
        let parts = split_markdown(&long_marker, 16);
        assert!(parts.iter().all(|p| p.len() <= 16), "{parts:?}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// Markdown-ish text: words, spaces, line and paragraph breaks, fences, markup and
        /// arbitrary Unicode.
        fn markdown() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                4 => "[a-zA-Z0-9]{1,12}",
                3 => Just(" ".to_owned()),
                2 => Just("\n".to_owned()),
                1 => Just("\n\n".to_owned()),
                1 => prop::sample::select(vec!["```", "```rust\n", "\n```\n", "~~~\n", "**", "`", "# ", "- ", "> ", "<script>", "[a](javascript:x)", "|a|b|\n|-|-|\n"]).prop_map(str::to_owned),
                2 => any::<char>().prop_map(String::from),
            ];
            prop::collection::vec(piece, 0..200).prop_map(|p| p.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn rendering_keeps_the_body_and_never_lets_script_through(text in markdown()) {
                let f = render_markdown(&text);
                prop_assert_eq!(&f.body, &text);
                if let Some(html) = f.html {
                    prop_assert!(!html.contains("<script"), "{html}");
                    prop_assert!(!html.contains("href=\"javascript:"), "{html}");
                }
            }

            #[test]
            fn every_cut_makes_progress(text in markdown(), max in 16usize..300) {
                // As split_markdown goes: every cut, the carried fence included, shortens the rest.
                let mut rest = text;
                while rest.len() > max {
                    let c = cut(&rest, max);
                    prop_assert!(c.consumed > c.carry.len(), "{rest:?} {c:?}");
                    rest = format!("{}{}", c.carry, &rest[c.consumed..]);
                }
            }

            #[test]
            fn every_part_fits_and_is_cut_on_a_character_boundary(text in markdown(), max in 16usize..300) {
                for part in split_markdown(&text, max) {
                    prop_assert!(part.len() <= max, "{} > {max}: {part:?}", part.len());
                }
            }

            #[test]
            fn splitting_text_without_fences_loses_and_adds_nothing(text in markdown(), max in 16usize..300) {
                let text = text.replace(['`', '~'], "'");
                let visible = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
                let parts = split_markdown(&text, max);
                prop_assert_eq!(visible(&parts.concat()), visible(&text));
            }
        }
    }
}
