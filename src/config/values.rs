//! The value types of the config, each checked while it is deserialized: durations, sizes,
//! glob patterns, relative paths, step names, signal names.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};

/// The longest duration a config may name.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A duration written like `"90s"`, `"10m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        let duration = humantime::parse_duration(&text).map_err(|err| {
            D::Error::custom(format!(
                "invalid duration `{text}` ({err}); write it like \"30s\", \"10m\" or \"1h\""
            ))
        })?;
        // Timeouts and pauses beyond a week are mistakes, and would overflow a deadline.
        if duration > MAX_DURATION {
            return Err(D::Error::custom(format!(
                "duration `{text}` is too long: at most {}",
                humantime::format_duration(MAX_DURATION)
            )));
        }
        Ok(Duration(duration))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size written like `"50 MiB"`, `"200MB"`, `"1 GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        text.trim()
            .parse::<bytesize::ByteSize>()
            .map(|size| Size(size.as_u64()))
            .map_err(|err| {
                D::Error::custom(format!(
                    "invalid size `{text}` ({err}); write it like \"50 MiB\" or \"1 GiB\""
                ))
            })
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::sys::output::iec_size(self.0))
    }
}

/// A glob over branch or tag names (`main`, `release/*`, `[0-9]*.[0-9]*.[0-9]*`).
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    matcher: globset::GlobMatcher,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern> {
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(false)
            .build()
            .with_context(|| format!("invalid pattern `{text}`"))?;
        Ok(Pattern {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.matcher.is_match(name)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Err(D::Error::custom("a branch or tag pattern cannot be empty"));
        }
        Pattern::new(&text).map_err(|err| D::Error::custom(format!("{err:#}")))
    }
}

/// Refuses a name that is not short and plain: one that names units, folders and locks (a job,
/// an app).
pub fn plain_name(kind: &str, text: &str) -> Result<()> {
    let valid = !text.is_empty()
        && text.len() <= 40
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
    if !valid {
        bail!(
            "invalid {kind} name `{text}`: use 1 to 40 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
        );
    }
    Ok(())
}

/// A path inside a release: relative, without `..`, never the release itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath(PathBuf);

impl RelPath {
    pub fn new(text: &str) -> Result<RelPath> {
        let path = Path::new(text.trim_end_matches('/'));
        if text.is_empty() || path.as_os_str().is_empty() {
            bail!("a path cannot be empty");
        }
        let mut clean = PathBuf::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                _ => bail!("`{text}` must be a relative path inside the release, without `..`"),
            }
        }
        if clean.as_os_str().is_empty() {
            bail!("`{text}` names the release itself");
        }
        if clean.components().next() == Some(Component::Normal(".git".as_ref())) {
            bail!("`{text}` is inside `.git`");
        }
        Ok(RelPath(clean))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// Whether one of the two paths is the other or inside it.
    pub fn overlaps(&self, other: &RelPath) -> bool {
        self.0.starts_with(&other.0) || other.0.starts_with(&self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        RelPath::new(&text).map_err(|err| D::Error::custom(format!("{err:#}")))
    }
}

/// A step's name: short, printable, used as the output prefix and in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepName(String);

impl StepName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StepName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        let valid = !text.is_empty()
            && text.len() <= 32
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(D::Error::custom(format!(
                "invalid step name `{text}`: use 1 to 32 letters, digits, `-`, `_` or `.`"
            )));
        }
        Ok(StepName(text))
    }
}

/// A signal written `HUP` or `SIGHUP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalName(pub nix::sys::signal::Signal);

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        let upper = text.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        nix::sys::signal::Signal::from_str(&full)
            .map(SignalName)
            .map_err(|_| D::Error::custom(format!("unknown signal `{text}`")))
    }
}

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}
