//! Guest text on its way to the shim's log or to containerd: escaped and cut by one escaper,
//! as [`escape`] (and [`Untrusted`], its `Display` form for log arguments) for the log and as
//! [`escape_message`] for containerd's error messages.
//!
//! The shim's log records are logfmt lines (`time="…" level=info msg="…"`) that containerd
//! copies into its own log, unescaped. A guest line with a newline would start a forged record,
//! one with `"` would end the `msg` field and add forged fields (`level=error msg=…`), and
//! terminal control sequences would reach whoever reads the log. So backslashes, double quotes,
//! every control character and the Unicode line, paragraph and bidirectional-override marks are
//! escaped (`\\`, `\"`, `\n`, `\r`, `\t`, `\u{1b}`, ...): the text stays readable, one field of
//! one record.

use std::fmt::{self, Display, Write};

/// Appended where text was cut.
pub const CUT_MARK: &str = "…";

/// `text` escaped for a log field or line, cut to at most `max` bytes of escaped text (then
/// [`CUT_MARK`] follows).
pub fn escape(text: &str, max: usize) -> String {
    let mut e = Escaper::new(max, Style::Log);
    let _ = e.write_str(text);
    e.finish()
}

/// `text` for containerd's error messages, at most `max` bytes (then [`CUT_MARK`] follows):
/// escaped as by [`escape`] except that newlines, tabs, quotes and backslashes are kept.
/// containerd and its clients quote an error when they log it, so these are harmless there,
/// and the message stays as the shim wrote it (`container "c" not found`, the console's last
/// lines); terminal controls and invisible marks are still escaped, for whoever prints it.
pub fn escape_message(text: &str, max: usize) -> String {
    let mut e = Escaper::new(max, Style::Message);
    let _ = e.write_str(text);
    e.finish()
}

/// Formats its value escaped and cut at [`super::limits::MAX_LOG_MESSAGE`] bytes:
/// `crate::plog!(Warn, "{id}: {}", Untrusted(&e))` for an error that may carry the agent's words.
/// Never holds more than that many bytes, however long the value's own text.
pub struct Untrusted<T>(pub T);

impl<T: Display> Display for Untrusted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut e = Escaper::new(super::limits::MAX_LOG_MESSAGE, Style::Log);
        // The escaper stops the value's formatting with an error once it is full.
        let _ = write!(e, "{}", self.0);
        f.write_str(&e.finish())
    }
}

/// What the text is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// One field of one logfmt record: everything that could end it is escaped.
    Log,
    /// A multi-line message containerd quotes itself.
    Message,
}

/// Escapes what is written into it, up to a byte budget.
struct Escaper {
    out: String,
    max: usize,
    cut: bool,
    style: Style,
}

impl Escaper {
    fn new(max: usize, style: Style) -> Escaper {
        Escaper {
            out: String::new(),
            max,
            cut: false,
            style,
        }
    }

    fn finish(mut self) -> String {
        if self.cut {
            self.out.push_str(CUT_MARK);
        }
        self.out
    }
}

impl Write for Escaper {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut buf = [0u8; 4];
        for c in s.chars() {
            if self.cut {
                return Err(fmt::Error);
            }
            let start = self.out.len();
            match c {
                '\n' | '\t' | '"' | '\\' if self.style == Style::Message => self.out.push(c),
                '\\' => self.out.push_str("\\\\"),
                '"' => self.out.push_str("\\\""),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                c if needs_code(c) => {
                    let _ = write!(self.out, "{}", c.escape_unicode());
                }
                c => self.out.push_str(c.encode_utf8(&mut buf)),
            }
            if self.out.len() > self.max {
                self.out.truncate(start);
                self.cut = true;
                return Err(fmt::Error);
            }
        }
        Ok(())
    }
}

/// Characters written as `\u{…}`: controls (C0, DEL, C1), line and paragraph separators, and
/// the bidirectional embeddings, overrides and isolates (which can make a log line read
/// differently from what it says).
fn needs_code(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_record_stays_inside_its_field() {
        let line = "ok\" level=error msg=\"pwned\ntime=\"x\" level=fatal msg=\"boom";
        let e = escape(line, 1000);
        assert_eq!(
            e,
            r#"ok\" level=error msg=\"pwned\ntime=\"x\" level=fatal msg=\"boom"#
        );
        assert!(!e.contains('\n'));
        // Every quote in the result is escaped: a logfmt reader sees one value.
        let bytes = e.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'"' {
                let backslashes = bytes[..i].iter().rev().take_while(|&&c| c == b'\\').count();
                assert_eq!(backslashes % 2, 1, "unescaped quote at {i} in {e}");
            }
        }
    }

    #[test]
    fn controls_backslashes_and_invisible_marks_are_escaped() {
        assert_eq!(escape("a\\b", 100), r"a\\b");
        assert_eq!(
            escape("\r\t\u{1b}[31m\u{7f}\u{85}", 100),
            r"\r\t\u{1b}[31m\u{7f}\u{85}"
        );
        assert_eq!(escape("x\u{2028}y\u{202e}z", 100), r"x\u{2028}y\u{202e}z");
        assert_eq!(escape("héllo wörld ✓", 100), "héllo wörld ✓");
        assert_eq!(escape("", 100), "");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        assert_eq!(escape("abcdef", 4), format!("abcd{CUT_MARK}"));
        assert_eq!(escape("abcd", 4), "abcd");
        // An escape sequence is never split: `\n` needs 2 bytes, only 1 is left.
        assert_eq!(escape("abc\n", 4), format!("abc{CUT_MARK}"));
        assert_eq!(escape("ééé", 5), format!("éé{CUT_MARK}"));
        let huge = "\n".repeat(4 << 20);
        let e = escape(&huge, 1024);
        assert!(e.len() <= 1024 + CUT_MARK.len() && !e.contains('\n'));
    }

    #[test]
    fn untrusted_formats_escaped_and_bounded() {
        struct Endless;
        impl Display for Endless {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for _ in 0..1_000_000 {
                    f.write_str("line\n")?;
                }
                Ok(())
            }
        }
        let s = Untrusted(Endless).to_string();
        let max = crate::guard::limits::MAX_LOG_MESSAGE;
        assert!(s.len() <= max + CUT_MARK.len(), "{}", s.len());
        assert!(s.starts_with(r"line\nline\n") && s.ends_with(CUT_MARK));
        assert_eq!(format!("e: {}", Untrusted("a\"b")), r#"e: a\"b"#);
    }

    #[test]
    fn error_messages_keep_their_lines_and_quotes() {
        let msg = "container \"c\" not found\n\t[ 0.1] a\\b\r\n\u{1b}]0;evil\u{7}";
        assert_eq!(
            escape_message(msg, 1000),
            "container \"c\" not found\n\t[ 0.1] a\\b\\r\n\\u{1b}]0;evil\\u{7}"
        );
        let long = "x\n".repeat(10_000);
        let e = escape_message(&long, 100);
        assert!(
            e.len() <= 100 + CUT_MARK.len() && e.ends_with(CUT_MARK),
            "{e}"
        );
    }
}
