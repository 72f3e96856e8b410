//! Recognising the reset commands `/new` and `/reset`.

use crate::event::CloseReason;

/// Whether `text` is a reset command, and which: [`CloseReason::UserNew`] for `/new`,
/// [`CloseReason::UserReset`] for `/reset`.
///
/// A reset command is a text that, after leading whitespace (Unicode `White_Space`), starts with `/new`
/// or `/reset` followed by the end of the text, whitespace or `@` (so a bot-addressed `/new@MyBot` counts).
/// Matching is case-sensitive: `/New` is not a reset command, nor is `/newest`.
///
/// ```
/// use hooks_core::event::CloseReason;
/// use hooks_core::lifecycle::parse_reset_command;
///
/// assert_eq!(parse_reset_command("/new"), Some(CloseReason::UserNew));
/// assert_eq!(parse_reset_command("\u{3000}/reset@MyBot please"), Some(CloseReason::UserReset));
/// assert_eq!(parse_reset_command("/newest"), None);
/// assert_eq!(parse_reset_command("/NEW"), None);
/// ```
pub fn parse_reset_command(text: &str) -> Option<CloseReason> {
    let rest = strip_command_slash(text)?;
    let (reason, after) = if let Some(after) = rest.strip_prefix("new") {
        (CloseReason::UserNew, after)
    } else if let Some(after) = rest.strip_prefix("reset") {
        (CloseReason::UserReset, after)
    } else {
        return None;
    };
    match after.chars().next() {
        None | Some('@') => Some(reason),
        Some(c) if c.is_whitespace() => Some(reason),
        Some(_) => None,
    }
}

/// What follows the `/` of a command: `text` after its leading white space (Unicode `White_Space`)
/// and the `/` that must then start it; `None` when the text is not a command. Every command starts
/// so; [`parse_reset_command`] then tells whether it is a reset command.
///
/// ```
/// use hooks_core::lifecycle::strip_command_slash;
///
/// assert_eq!(strip_command_slash("\u{3000}/new@MyBot"), Some("new@MyBot"));
/// assert_eq!(strip_command_slash("/"), Some(""));
/// assert_eq!(strip_command_slash("see /new"), None);
/// ```
pub fn strip_command_slash(text: &str) -> Option<&str> {
    // Most texts start with an ASCII character that is neither `/` nor white space: not a command,
    // known without the general trim (~30 instructions a message in a replay).
    if let Some(&b) = text.as_bytes().first()
        && b.is_ascii()
        && b != b'/'
        && !matches!(b, b' ' | b'\t'..=b'\r')
    {
        return None;
    }
    // `char::is_whitespace` is exactly the Unicode White_Space property.
    text.trim_start_matches(char::is_whitespace).strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_commands_per_contract() {
        let cases: &[(&str, Option<CloseReason>)] = &[
            ("/new", Some(CloseReason::UserNew)),
            ("/reset", Some(CloseReason::UserReset)),
            ("  /new hello", Some(CloseReason::UserNew)),
            ("\t\n/reset\u{a0}x", Some(CloseReason::UserReset)),
            ("\u{2003}/new", Some(CloseReason::UserNew)),
            ("/new@MyBot", Some(CloseReason::UserNew)),
            ("/reset@", Some(CloseReason::UserReset)),
            ("/new\u{85}", Some(CloseReason::UserNew)),
            ("/newest", None),
            ("/resets", None),
            ("/New", None),
            ("/RESET", None),
            ("new", None),
            ("x /new", None),
            ("//new", None),
            ("", None),
            ("/", None),
            ("/new-chat", None),
            ("\u{b}\u{c}\r/new", Some(CloseReason::UserNew)),
            ("\u{1f}/new", None),
            ("a/new", None),
            // U+200B ZERO WIDTH SPACE is not White_Space.
            ("\u{200b}/new", None),
            ("/new\u{200b}", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_reset_command(text), *want, "{text:?}");
        }
    }
}
