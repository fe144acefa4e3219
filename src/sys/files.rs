//! Files replaced whole: a reader (nginx, systemd, the next run) sees the old content or the
//! new, never half of it, and after a crash the new one is on disk or the old one still is.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `contents` to `path` through a temporary file beside it, with `mode`, synced, then
/// renamed over it.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("failed to create a temporary file in `{}`", dir.display()))?;
    let written = file
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.as_file().sync_all());
    written.with_context(|| format!("failed to write `{}`", path.display()))?;
    file.persist(path)
        .map_err(|err| err.error)
        .with_context(|| format!("failed to replace `{}`", path.display()))?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A value for an env file, as `ats-hook exec` (and Compose) read it back (dotenv's rules): bare
/// when plain, else in single quotes (nothing expands there), else in double quotes, escaped.
pub fn quote_env(value: &str) -> String {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c))
    {
        value.to_string()
    } else if !value.contains('\'') {
        format!("'{value}'")
    } else {
        format!(
            "\"{}\"",
            value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
        )
    }
}
