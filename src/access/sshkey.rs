//! OpenSSH public keys and the `authorized_keys` lines that restrict a deploy key to one
//! repository.
//!
//! A key is checked the way sshd would read it: a known type, base64 that decodes, and a blob
//! whose embedded type matches the declared one. The fingerprint is OpenSSH's (`SHA256:` and the
//! unpadded base64 of the blob's SHA-256), so what ats-hook prints matches `ssh-keygen -l`.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: String,
    /// The base64 text of the key blob, as written.
    pub blob: String,
    pub comment: String,
}

impl PublicKey {
    /// Parses `type base64 [comment]`, one key, no options.
    pub fn parse(text: &str) -> Result<PublicKey> {
        if text.contains("PRIVATE KEY") {
            bail!("this is a private key: give the public one (the `.pub` file)");
        }
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let [line] = lines[..] else {
            bail!(
                "expected one public key, found {} lines of keys",
                lines.len()
            );
        };
        let mut fields = line.splitn(3, char::is_whitespace);
        let kind = fields.next().unwrap_or_default();
        let blob = fields.next().unwrap_or_default().trim();
        let comment = fields.next().unwrap_or_default().trim();
        if !KEY_TYPES.contains(&kind) {
            bail!(
                "`{}` is not a public key type ({})",
                kind.escape_debug(),
                KEY_TYPES.join(", ")
            );
        }
        let decoded = STANDARD
            .decode(blob)
            .map_err(|_| anyhow::anyhow!("the key's base64 does not decode"))?;
        let embedded = decoded
            .get(..4)
            .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
            .and_then(|len| decoded.get(4..4 + len));
        if embedded != Some(kind.as_bytes()) {
            bail!("the key's data does not hold a `{kind}` key");
        }
        if comment.chars().any(|c| c.is_control()) {
            bail!("the key's comment holds control characters");
        }
        Ok(PublicKey {
            kind: kind.to_string(),
            blob: blob.to_string(),
            comment: comment.to_string(),
        })
    }

    pub fn read(path: &Path) -> Result<PublicKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read public key `{}`", path.display()))?;
        PublicKey::parse(&text)
            .with_context(|| format!("`{}` is not a usable public key", path.display()))
    }

    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let decoded = STANDARD.decode(&self.blob).unwrap_or_default();
        format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(decoded)))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.blob)?;
        if !self.comment.is_empty() {
            write!(f, " {}", self.comment)?;
        }
        Ok(())
    }
}

/// One line of `authorized_keys`: its options (if any) and its key.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    pub options: String,
    pub key: PublicKey,
}

impl AuthorizedKey {
    /// Parses a line; `None` for blank lines, comments and lines that hold no key we know.
    pub fn parse(line: &str) -> Option<AuthorizedKey> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let first = line.split_whitespace().next()?;
        if KEY_TYPES.contains(&first) {
            return PublicKey::parse(line).ok().map(|key| AuthorizedKey {
                options: String::new(),
                key,
            });
        }
        // Options run to the first blank outside double quotes.
        let mut quoted = false;
        let mut escaped = false;
        let mut end = line.len();
        for (i, c) in line.char_indices() {
            match c {
                '\\' if quoted && !escaped => {
                    escaped = true;
                    continue;
                }
                '"' if !escaped => quoted = !quoted,
                c if c.is_whitespace() && !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
            escaped = false;
        }
        let key = PublicKey::parse(line[end..].trim()).ok()?;
        Some(AuthorizedKey {
            options: line[..end].to_string(),
            key,
        })
    }

    /// The value of the `command="..."` option.
    pub fn forced_command(&self) -> Option<String> {
        let start = self.options.find("command=\"")? + "command=\"".len();
        let mut value = String::new();
        let mut chars = self.options[start..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?),
                '"' => return Some(value),
                c => value.push(c),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDn5X3sR/SMUKlYKiScpuWVm1UZ2vOBAqaZvdx+XgOqw ci@example";

    #[test]
    fn parses_and_fingerprints_a_key() {
        let key = PublicKey::parse(KEY).unwrap();
        assert_eq!(key.kind, "ssh-ed25519");
        assert_eq!(key.comment, "ci@example");
        // What `ssh-keygen -l` printed for this key.
        assert_eq!(
            key.fingerprint(),
            "SHA256:A6GyxdJnyXbD/TFWfbMpTwNlsF0RoOjRm5r9c8D7X5w"
        );
        assert_eq!(key.to_string(), KEY);
    }

    #[test]
    fn refuses_malformed_keys() {
        for (text, needle) in [
            ("", "found 0 lines"),
            ("ssh-dss AAAA", "not a public key type"),
            ("ssh-ed25519 !!!", "does not decode"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIDn5X3sR/SMUKlYKiScpuWVm1UZ2vOBAqaZvdx+XgOqw",
                "does not hold a `ssh-rsa` key",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----",
                "this is a private key",
            ),
            (&format!("{KEY}\n{KEY}"), "found 2 lines"),
        ] {
            let err = format!("{:#}", PublicKey::parse(text).unwrap_err());
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn reads_options_and_forced_command() {
        let line =
            format!("restrict,command=\"/usr/bin/ats-hook ssh-gate --repo /srv/a b\\\"c\" {KEY}");
        let entry = AuthorizedKey::parse(&line).unwrap();
        assert_eq!(entry.key.comment, "ci@example");
        assert_eq!(
            entry.forced_command().unwrap(),
            "/usr/bin/ats-hook ssh-gate --repo /srv/a b\"c"
        );
        assert!(AuthorizedKey::parse("# comment").is_none());
        assert!(AuthorizedKey::parse(KEY).unwrap().options.is_empty());
    }
}
