//! Finding a tagged text — `<prefix><value><terminator>` — in a byte stream without holding
//! the stream: the kernel's `Linux version ...` banner, the agent's version marker.

use std::io::{ErrorKind, Read};

/// How much is read at a time.
const CHUNK: usize = 1 << 20;

/// A text to look for.
pub struct Tag<'a> {
    /// What comes before the value.
    pub prefix: &'a [u8],
    /// Bytes that end the value (not part of it).
    pub terminators: &'a [u8],
    /// The longest value; a longer run without a terminator is not a match.
    pub max_len: usize,
    /// Whether a candidate value (without its terminator) is the one looked for.
    pub accept: fn(&[u8]) -> bool,
}

/// The value of the first match of `tag` in `r` that `tag.accept` takes.
pub fn find_tag(mut r: impl Read, tag: &Tag) -> std::io::Result<Option<String>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut eof = false;
    loop {
        let mut from = 0;
        let mut pending = None;
        while let Some(i) = find(&buf[from..], tag.prefix).map(|i| i + from) {
            match judge(&buf[i + tag.prefix.len()..], tag, eof) {
                Candidate::Match(value) => return Ok(Some(value)),
                Candidate::No => from = i + 1,
                Candidate::NeedMore => {
                    pending = Some(i);
                    break;
                }
            }
        }
        if eof {
            return Ok(None);
        }
        // Keep what a match may still start in: the pending candidate, else the tail that
        // could be the start of the prefix.
        let keep_from = pending.unwrap_or_else(|| {
            buf.len()
                .saturating_sub(tag.prefix.len().saturating_sub(1))
                .max(from.min(buf.len()))
        });
        buf.drain(..keep_from);
        match r.read(&mut chunk) {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the bytes after a prefix are.
enum Candidate {
    /// The value looked for.
    Match(String),
    /// Not it.
    No,
    /// Not decidable before more bytes come.
    NeedMore,
}

fn judge(after: &[u8], tag: &Tag, eof: bool) -> Candidate {
    let window = &after[..after.len().min(tag.max_len + 1)];
    match window.iter().position(|b| tag.terminators.contains(b)) {
        Some(end) if (tag.accept)(&after[..end]) => {
            Candidate::Match(String::from_utf8_lossy(&after[..end]).into_owned())
        }
        Some(_) => Candidate::No,
        None if after.len() > tag.max_len || eof => Candidate::No,
        None => Candidate::NeedMore,
    }
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut start = 0;
    while let Some(p) = hay[start..].iter().position(|&b| b == first) {
        let i = start + p;
        if hay[i + 1..].starts_with(rest) {
            return Some(i);
        }
        start = i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGITS: Tag = Tag {
        prefix: b"V=",
        terminators: b"\n",
        max_len: 8,
        accept: |v| !v.is_empty() && v.iter().all(u8::is_ascii_digit),
    };

    /// A reader that returns at most `n` bytes per read, to cross chunk borders anywhere.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn finds_the_first_accepted_value_across_reads() {
        let text = b"xxV=abc\nV=123456789\nVV=42\nV=7\n";
        for step in 1..text.len() {
            let got = find_tag(Trickle(text, step), &DIGITS).unwrap();
            assert_eq!(got.as_deref(), Some("42"), "step {step}");
        }
    }

    #[test]
    fn no_match_and_unterminated_values() {
        assert_eq!(find_tag(&b"nothing here"[..], &DIGITS).unwrap(), None);
        assert_eq!(find_tag(&b"V=12"[..], &DIGITS).unwrap(), None);
        assert_eq!(find_tag(&b""[..], &DIGITS).unwrap(), None);
        assert_eq!(find_tag(&b"V"[..], &DIGITS).unwrap(), None);
    }
}
