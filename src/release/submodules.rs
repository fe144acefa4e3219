//! Submodules (`deploy.submodules = true`): each release holds every submodule's files at the
//! commit the superproject records, recursively.
//!
//! The commits come from the URLs in `.gitmodules` (a path, `ssh://` or `host:path` with the
//! deploy user's own SSH setup, `https://`; a relative URL is taken from the repository that
//! names it, the bare repository itself at the top). Each URL has a bare cache under
//! `.ats-hook/submodules/`, fetched with git only when a commit is missing from it, so a deploy
//! fetches only new commits. The caches are then read as alternates of the repository, in this
//! process only: a submodule's tree is checked out and compared like a folder of the
//! superproject's, and a release built from an old one writes only the submodule files that
//! changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use git2::{Oid, Repository, Tree};

use crate::state::layout::Layout;
use crate::sys::output;
use crate::sys::process::{Cmd, Exit};

/// How deep submodules may nest.
const DEPTH: usize = 8;
/// The limit for one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// A gitlink's mode in a tree.
pub const GITLINK: u32 = 0o160000;

/// One submodule of a tree, as its `.gitmodules` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submodule {
    pub name: String,
    pub path: String,
    pub url: String,
}

/// Makes every submodule commit of `commit` (recursively) readable through `repo`: fetches
/// what the caches lack, then adds the caches as alternates of `repo`'s object database.
pub fn attach(repo: &Repository, layout: &Layout, allowed: &[String], commit: Oid) -> Result<()> {
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .with_context(|| format!("failed to read the tree of `{commit}`"))?;
    let base = repo
        .path()
        .to_string_lossy()
        .trim_end_matches('/')
        .to_string();
    let mut attached = BTreeMap::new();
    let places = Places { layout, allowed };
    attach_tree(repo, &places, &tree, "", &base, 0, &mut attached)
}

/// Where caches go, and which URLs may fill them.
struct Places<'a> {
    layout: &'a Layout,
    allowed: &'a [String],
}

fn attach_tree(
    repo: &Repository,
    places: &Places<'_>,
    tree: &Tree<'_>,
    prefix: &str,
    base_url: &str,
    depth: usize,
    attached: &mut BTreeMap<PathBuf, ()>,
) -> Result<()> {
    for module in listed(repo, tree, prefix)? {
        // A listed path the commit has no gitlink at (a submodule removed, `.gitmodules` left)
        // is not checked out; a gitlink `.gitmodules` does not list cannot be, and the
        // checkout says so.
        let Ok(entry) = tree.get_path(Path::new(&module.path)) else {
            continue;
        };
        if entry.filemode() as u32 != GITLINK {
            continue;
        }
        let (path, id) = (module.path.as_str(), entry.id());
        if depth >= DEPTH {
            bail!("submodule `{prefix}{path}` is nested more than {DEPTH} deep");
        }
        let url = resolve_url(base_url, &module.url);
        check_allowed(places.allowed, &url, &format!("{prefix}{path}"))?;
        let cache = places.layout.submodule_cache(&cache_name(&url));
        ensure(&cache, &url, id, &format!("{prefix}{path}"))?;
        if attached.insert(cache.clone(), ()).is_none() {
            repo.odb()
                .and_then(|odb| odb.add_disk_alternate(&cache.join("objects").to_string_lossy()))
                .with_context(|| format!("failed to read the cache `{}`", cache.display()))?;
        }
        let sub = repo
            .find_commit(id)
            .and_then(|c| c.tree())
            .with_context(|| format!("failed to read submodule `{prefix}{path}` at `{id}`"))?;
        attach_tree(
            repo,
            places,
            &sub,
            &format!("{prefix}{path}/"),
            &url,
            depth + 1,
            attached,
        )?;
    }
    Ok(())
}

/// The submodules `.gitmodules` at the top of `tree` lists (none without the file).
fn listed(repo: &Repository, tree: &Tree<'_>, prefix: &str) -> Result<Vec<Submodule>> {
    let Some(entry) = tree.get_name(".gitmodules") else {
        return Ok(Vec::new());
    };
    let blob = repo
        .find_blob(entry.id())
        .with_context(|| format!("failed to read `{prefix}.gitmodules`"))?;
    parse_gitmodules(blob.content()).with_context(|| format!("`{prefix}.gitmodules` is malformed"))
}

/// Reads `.gitmodules` (git's config format) through git's own parser.
pub fn parse_gitmodules(text: &[u8]) -> Result<Vec<Submodule>> {
    let file = tempfile::NamedTempFile::new().context("failed to create a temporary file")?;
    std::fs::write(file.path(), text).context("failed to write a temporary file")?;
    let config = git2::Config::open(file.path())?;
    let mut modules: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    let mut entries = config.entries(Some(r"^submodule\..*\.(path|url)$"))?;
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let (Ok(key), Ok(value)) = (entry.name(), entry.value()) else {
            continue;
        };
        let rest = &key["submodule.".len()..];
        let (name, field) = rest.rsplit_once('.').unwrap_or((rest, ""));
        let slot = modules.entry(name.to_string()).or_default();
        match field {
            "path" => slot.0 = Some(value.trim_end_matches('/').to_string()),
            "url" => slot.1 = Some(value.to_string()),
            _ => {}
        }
    }
    modules
        .into_iter()
        .map(|(name, (path, url))| match (path, url) {
            (Some(path), Some(url)) if !url.is_empty() => Ok(Submodule { name, path, url }),
            (None, _) => bail!("submodule `{name}` has no `path`"),
            _ => bail!("submodule `{name}` has no `url`"),
        })
        .collect()
}

/// `url` as git resolves it when it is relative (`./x`, `../x`) to `base`, the URL of the
/// repository whose `.gitmodules` names it.
pub fn resolve_url(base: &str, url: &str) -> String {
    if !url.starts_with("./") && !url.starts_with("../") {
        return url.to_string();
    }
    let mut base = base.trim_end_matches('/').to_string();
    // What joins the rest: `/`, or `:` when the last step up went past scp-like `host:`.
    let mut separator = '/';
    let mut rest = url;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            match base.rfind(['/', ':']) {
                Some(cut) => {
                    separator = if base[cut..].starts_with(':') {
                        ':'
                    } else {
                        '/'
                    };
                    base.truncate(cut);
                }
                None => base.clear(),
            }
        } else {
            break;
        }
    }
    if base.is_empty() {
        return rest.to_string();
    }
    format!("{base}{separator}{rest}")
}

/// Refuses `url` unless one of the configured prefixes covers it, whole path segments only,
/// with no `.` or `..` segment that could climb out of it.
fn check_allowed(allowed: &[String], url: &str, path: &str) -> Result<()> {
    let climbs = url
        .split(['/', ':'])
        .any(|segment| segment == ".." || segment == ".");
    let covered = |prefix: &String| {
        !prefix.is_empty()
            && url.starts_with(prefix.as_str())
            && (prefix.ends_with(['/', ':'])
                || url.len() == prefix.len()
                || url[prefix.len()..].starts_with('/'))
    };
    if climbs || !allowed.iter().any(covered) {
        let url = output::printable(url);
        bail!(
            "submodule `{path}`: `{url}` is not a URL submodules may be fetched from; if it is yours, allow it in the config: `[deploy] submodule_urls = [\"{url}\"]` (or a prefix of it ending in `/`)"
        );
    }
    Ok(())
}

/// The transports a submodule fetch may use: none but a path, SSH and HTTPS (no `ext::`
/// command, no plain `git://` or `http://`), whatever the deploy user's git config says (a
/// `protocol.<name>.allow` there would win over `protocol.allow`, so the rest are named too).
const PROTOCOLS: [&str; 8] = [
    "protocol.allow=never",
    "protocol.file.allow=always",
    "protocol.ssh.allow=always",
    "protocol.https.allow=always",
    "protocol.ext.allow=never",
    "protocol.fd.allow=never",
    "protocol.git.allow=never",
    "protocol.http.allow=never",
];

/// A cache's folder name: readable, and unique per URL.
fn cache_name(url: &str) -> String {
    let hex = crate::sys::output::short_hash(url.as_bytes());
    let tail: String = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("module")
        .trim_end_matches(".git")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    format!("{tail}-{hex}.git")
}

/// Makes `cache` a bare repository holding `commit` from `url`, fetching when it lacks it.
fn ensure(cache: &Path, url: &str, commit: Oid, path: &str) -> Result<()> {
    let repo = match Repository::open_bare(cache) {
        Ok(repo) => repo,
        Err(_) => {
            let _ = std::fs::remove_dir_all(cache);
            Repository::init_bare(cache)
                .with_context(|| format!("failed to create the cache `{}`", cache.display()))?
        }
    };
    if repo.find_commit(commit).is_ok() {
        return Ok(());
    }
    output::say(format!(
        "submodule `{path}`: fetching {} from {url}",
        output::short(&commit.to_string())
    ));
    // Branches and tags first; a commit no ref reaches (yet) by its id, which most servers
    // allow.
    let refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];
    let mut last = fetch(cache, url, &refspecs)?;
    if Repository::open_bare(cache)?.find_commit(commit).is_err() {
        last = fetch(cache, url, &[&commit.to_string()])?;
    }
    if Repository::open_bare(cache)?.find_commit(commit).is_err() {
        let why = if last.is_empty() {
            String::new()
        } else {
            format!(": {}", last.join(" / "))
        };
        bail!("submodule `{path}`: commit `{commit}` could not be fetched from `{url}`{why}");
    }
    Ok(())
}

/// `git fetch URL REFSPECS` into `cache`; returns the lines git printed when it failed.
fn fetch(cache: &Path, url: &str, refspecs: &[&str]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut git = Cmd::new("git");
    for setting in PROTOCOLS {
        git = git.arg("-c").arg(setting);
    }
    let finished = git
        .arg("--git-dir")
        .arg(cache)
        .args(["fetch", "--quiet", "--no-write-fetch-head", "--", url])
        .args(refspecs.iter().copied())
        .timeout(FETCH_TIMEOUT)
        .stream(&mut |line| lines.push(line.to_string()))
        .context("failed to run `git fetch`")?;
    match finished.exit {
        Exit::Code(0) => Ok(Vec::new()),
        exit => {
            lines.push(format!("git fetch: {exit}"));
            Ok(lines)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_urls_resolve_as_git_resolves_them() {
        assert_eq!(resolve_url("/srv/app.git", "../lib.git"), "/srv/lib.git");
        assert_eq!(
            resolve_url("/srv/app.git", "./lib.git"),
            "/srv/app.git/lib.git"
        );
        assert_eq!(
            resolve_url("ssh://git@host/org/app.git", "../../other/lib.git"),
            "ssh://git@host/other/lib.git"
        );
        assert_eq!(
            resolve_url("git@host:org/app.git", "../lib.git"),
            "git@host:org/lib.git"
        );
        assert_eq!(
            resolve_url("git@host:app.git", "../lib.git"),
            "git@host:lib.git"
        );
        assert_eq!(
            resolve_url("/srv/app.git", "https://example.com/lib.git"),
            "https://example.com/lib.git"
        );
    }

    #[test]
    fn only_urls_under_an_allowed_prefix_are_fetched() {
        let allowed = ["/srv/git/".to_string(), "git@github.com:acme".to_string()];
        for url in [
            "/srv/git/theme.git",
            "/srv/git/sub/lib.git",
            "git@github.com:acme/lib.git",
        ] {
            check_allowed(&allowed, url, "x").unwrap();
        }
        for url in [
            "/srv/other.git",
            "/srv/git/../other.git",
            "/srv/gitx/lib.git",
            "git@github.com:acmecorp/lib.git",
            "https://evil.example/lib.git",
        ] {
            let err = check_allowed(&allowed, url, "vendor/lib").unwrap_err();
            assert!(
                format!("{err}").contains("is not a URL submodules may be fetched from"),
                "{url}"
            );
        }
        assert!(check_allowed(&[], "/srv/git/theme.git", "x").is_err());
    }

    #[test]
    fn gitmodules_are_read_with_names_paths_and_urls() {
        let text = b"[submodule \"theme\"]\n\tpath = themes/base/\n\turl = ../theme.git\n[submodule \"lib.v2\"]\n\tpath = vendor/lib\n\turl = https://example.com/lib.git\n";
        let modules = parse_gitmodules(text).unwrap();
        assert_eq!(
            modules,
            [
                Submodule {
                    name: "lib.v2".into(),
                    path: "vendor/lib".into(),
                    url: "https://example.com/lib.git".into()
                },
                Submodule {
                    name: "theme".into(),
                    path: "themes/base".into(),
                    url: "../theme.git".into()
                },
            ]
        );
        let err = parse_gitmodules(b"[submodule \"x\"]\n\tpath = x\n").unwrap_err();
        assert!(format!("{err:#}").contains("submodule `x` has no `url`"));
        assert!(parse_gitmodules(b"[submodule \"x\"\n").is_err());
    }
}
