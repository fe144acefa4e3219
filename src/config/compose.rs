//! `[compose]`: an app run by Docker Compose. One fixed project per deploy root, every image a
//! release builds tagged with the release, built before anything switches; with `[serve]`, the
//! web service hands over between the two slots like any server.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{Duration, RelPath};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compose {
    /// The Compose files, in the release, in order (later ones override earlier ones). Default:
    /// the one Compose finds itself (`compose.yaml`, `docker-compose.yml`, …).
    #[serde(default)]
    pub files: Vec<RelPath>,
    /// Files of variables for the Compose file's `${…}` (Compose's `--env-file`), in order.
    /// Default: the release's `.env`, as Compose reads it.
    #[serde(default)]
    pub env_files: Vec<RelPath>,
    /// The project name. Default: the deploy root's folder name, so that one deploy root is
    /// one project, whatever release runs (`/srv/app` → `app`).
    pub project: Option<String>,
    /// With `[serve]`: the service that takes web traffic, run on each slot in turn.
    pub web: Option<String>,
    /// The port the web service listens on inside its container. Default: the one its
    /// `ports` or `expose` names.
    pub port: Option<u16>,
    /// Services that get the deploy's environment (`[env]`, the env file, `ATS_*`). Default:
    /// the services the release builds, and the web service.
    pub env_to: Option<Vec<String>>,
    /// How long `up --wait` may take for the services to run (and be healthy).
    #[serde(default = "default_wait")]
    pub wait: Duration,
    /// How long a build may take.
    #[serde(default = "default_build_timeout")]
    pub build_timeout: Duration,
}

impl Compose {
    pub(super) fn check(&self, serve: Option<&super::Serve>) -> Result<()> {
        if let Some(project) = &self.project {
            check_project(project)?;
        }
        for name in self.web.iter().chain(self.env_to.iter().flatten()) {
            if name.is_empty()
                || name.starts_with('-')
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                bail!("`compose`: `{name}` is not a service name");
            }
        }
        match (serve, &self.web) {
            (Some(_), None) => bail!(
                "`compose` with `[serve]` needs `compose.web`: the service that takes web traffic, started on each slot in turn"
            ),
            (None, Some(web)) => bail!(
                "`compose.web` `{web}` hands over between slots, which needs `[serve]` (its `slots` and `proxy`); without it, `up` recreates every service in place"
            ),
            (Some(serve), Some(_)) => {
                if serve.unit.is_some() || serve.start.is_some() {
                    bail!("`serve.unit` and `serve.start` are for servers ats-hook starts itself: with `[compose]`, the web service's container runs on the slot");
                }
                if serve.slots.iter().any(|a| a.port().is_none()) {
                    bail!("`serve.slots`: a container's port is published on a TCP address (`127.0.0.1:8001`), not on a unix socket");
                }
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The project name for the deploy root `root`.
    pub fn project_name(&self, root: &Path) -> String {
        if let Some(project) = &self.project {
            return project.clone();
        }
        let name = root
            .file_name()
            .map(|name| name.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let name = name.trim_start_matches(['-', '_']).to_string();
        if name.is_empty() {
            "app".to_string()
        } else {
            name
        }
    }
}

/// Compose's rule: lowercase letters, digits, `-` and `_`, starting with a letter or digit.
fn check_project(project: &str) -> Result<()> {
    let first = project.chars().next();
    if !first.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        || !project
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        bail!(
            "`compose.project` `{project}` is not a Compose project name: lowercase letters, digits, `-` and `_`, starting with a letter or digit"
        );
    }
    Ok(())
}

fn default_wait() -> Duration {
    Duration(std::time::Duration::from_secs(120))
}

fn default_build_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(1800))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compose(text: &str) -> Compose {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_project_is_named_after_the_deploy_root() {
        let c = compose("");
        assert_eq!(c.project_name(Path::new("/srv/My App")), "my-app");
        assert_eq!(
            c.project_name(Path::new("/srv/shop.example")),
            "shop-example"
        );
        assert_eq!(c.project_name(Path::new("/srv/_x")), "x");
        assert_eq!(
            compose("project = \"p1\"").project_name(Path::new("/srv/a")),
            "p1"
        );
    }

    #[test]
    fn a_bad_project_name_is_refused() {
        for bad in ["My", "-a", "a b", ""] {
            let c = Compose {
                project: Some(bad.into()),
                ..compose("")
            };
            let err = c.check(None).unwrap_err().to_string();
            assert!(err.contains("not a Compose project name"), "{bad}: {err}");
        }
    }

    #[test]
    fn web_needs_serve() {
        let err = compose("web = \"web\"")
            .check(None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs `[serve]`"), "{err}");
    }
}
