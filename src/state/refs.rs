//! The ref updates git writes on a hook's standard input: `<old-sha> <new-sha> <refname>`.
//!
//! Parsing is strict and bounded: a line that is not exactly three fields with 40-hex shas is an
//! error naming the line, and no line may be longer than [`MAX_LINE`], so a hostile or broken
//! caller cannot make the hook allocate without limit.

use std::fmt;
use std::io::BufRead;

use anyhow::{bail, Context, Result};
use git2::Oid;

/// Longer than any ref line git writes (two shas and a ref name git limits far below this).
pub const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// `None` when the ref is created.
    pub old: Option<Oid>,
    /// `None` when the ref is deleted.
    pub new: Option<Oid>,
    pub name: String,
}

impl RefUpdate {
    /// `main` for `refs/heads/main`, `1.2.3` for `refs/tags/1.2.3`.
    pub fn short_name(&self) -> &str {
        short_ref(&self.name)
    }
}

pub fn short_ref(name: &str) -> &str {
    name.strip_prefix("refs/heads/")
        .or_else(|| name.strip_prefix("refs/tags/"))
        .unwrap_or(name)
}

impl fmt::Display for RefUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Reads every ref line; an empty input is an error (git never runs the hook without one).
pub fn parse(mut input: impl BufRead) -> Result<Vec<RefUpdate>> {
    let mut updates = Vec::new();
    let mut buf = Vec::new();
    for number in 1.. {
        buf.clear();
        let read = std::io::Read::take(&mut input, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .context("failed to read ref updates from standard input")?;
        if read == 0 {
            break;
        }
        if buf.len() > MAX_LINE {
            bail!("ref line {number} is longer than {MAX_LINE} bytes");
        }
        let line = std::str::from_utf8(&buf)
            .map_err(|_| anyhow::anyhow!("ref line {number} is not UTF-8"))?
            .trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        updates.push(
            parse_line(line).with_context(|| {
                format!("malformed ref line {number}: `{}`", line.escape_debug())
            })?,
        );
    }
    if updates.is_empty() {
        bail!("no ref updates on standard input (expected `<old-sha> <new-sha> <refname>` lines)");
    }
    Ok(updates)
}

fn parse_line(line: &str) -> Result<RefUpdate> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [old, new, name] = fields[..] else {
        bail!(
            "expected 3 fields separated by single spaces, found {}",
            fields.len()
        );
    };
    let old = parse_sha(old, "old")?;
    let new = parse_sha(new, "new")?;
    if old.is_none() && new.is_none() {
        bail!("both shas are zero");
    }
    if !name.starts_with("refs/") || name.chars().any(|c| c.is_control()) {
        bail!("`{}` is not a full ref name", name.escape_debug());
    }
    Ok(RefUpdate {
        old,
        new,
        name: name.to_string(),
    })
}

fn parse_sha(text: &str, which: &str) -> Result<Option<Oid>> {
    if text.len() != 40 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{which} sha `{}` is not 40 hex digits", text.escape_debug());
    }
    let oid = Oid::from_str(text).with_context(|| format!("{which} sha `{text}`"))?;
    Ok((!oid.is_zero()).then_some(oid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const Z: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn parses_created_updated_deleted() {
        let input =
            format!("{Z} {A} refs/heads/main\n{A} {A} refs/tags/1.0\n{A} {Z} refs/heads/old\n");
        let updates = parse(input.as_bytes()).unwrap();
        assert_eq!(updates.len(), 3);
        assert_eq!(updates[0].old, None);
        assert_eq!(updates[0].short_name(), "main");
        assert_eq!(updates[2].new, None);
    }

    #[test]
    fn errors_name_the_line() {
        for (input, needle) in [
            (
                format!("{A} {A} refs/heads/main\n{A} refs/heads/x\n"),
                "line 2",
            ),
            (
                format!("{A} 123 refs/heads/main\n"),
                "new sha `123` is not 40 hex digits",
            ),
            (format!("{A} {A}  refs/heads/main\n"), "found 4"),
            (format!("{Z} {Z} refs/heads/main\n"), "both shas are zero"),
            (format!("{A} {A} main\n"), "not a full ref name"),
            (String::new(), "no ref updates"),
            ("x".repeat(MAX_LINE + 10), "longer than 4096 bytes"),
        ] {
            let err = format!("{:#}", parse(input.as_bytes()).unwrap_err());
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn generated_ref_lines_never_panic() {
        let valid = vec![
            format!("{Z} {A} refs/heads/main\n").into_bytes(),
            format!("{A} {A} refs/tags/1.0\n{A} {Z} refs/heads/old\n").into_bytes(),
            format!("{A} {A} refs/heads/feature/x\r\n\n").into_bytes(),
        ];
        crate::sys::fuzz::check("ref lines", crate::sys::fuzz::inputs(valid), |bytes| {
            if let Ok(updates) = parse(bytes.as_slice()) {
                proptest::prop_assert!(!updates.is_empty());
                for update in updates {
                    proptest::prop_assert!(update.name.starts_with("refs/"));
                    proptest::prop_assert!(update.old.is_some() || update.new.is_some());
                }
            }
            Ok(())
        });
    }
}
