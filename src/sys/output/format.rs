//! How values read in what ats-hook prints: durations, sizes, counts, short ids, times, and
//! text from outside made safe for a terminal.

/// `1.2s`, `340ms`: how durations read in the pusher's output.
pub fn seconds(duration: std::time::Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// `512 B`, `12.3 KB`, `58.9 MB`.
pub fn size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} KB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

/// `1 file`, `2 files`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The first 7 characters of a sha (or of whatever a damaged record holds instead).
pub fn short(sha: &str) -> &str {
    prefix(sha, 7)
}

/// The first `n` characters of `text`, never cutting one in two.
/// The first 16 hex digits of the SHA-256 of `bytes`: a name for a file, a fingerprint.
pub fn short_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn prefix(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// A time as the history writes it: `2026-11-22T04:55:00Z`.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `text` safe to print on a terminal: each control character (an escape sequence's `ESC`, a
/// carriage return that hides what came before, a newline that fakes a line) written as `\u{1b}`.
/// For text from a commit or a pusher: subjects, notes, push options, names.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `50 MiB`: a size as the config writes it.
pub fn iec_size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("Fix the login — ok"), "Fix the login — ok");
        assert_eq!(
            printable("a\x1b]0;pwned\x07\rb\n\u{9b}c"),
            "a\\u{1b}]0;pwned\\u{7}\\u{d}b\\u{a}\\u{9b}c"
        );
    }

    #[test]
    fn shorts_never_cut_a_character() {
        assert_eq!(short("0123456789abcdef"), "0123456");
        assert_eq!(short("🙂🙂🙂"), "🙂🙂🙂");
        assert_eq!(short("ab🙂cdefgh"), "ab🙂cdef");
        assert_eq!(prefix("é", 0), "");
    }
}
