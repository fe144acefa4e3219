//! Dependencies are part of the release, with the real tools: virtualenvs built by real pip
//! from local wheels, `node_modules` by real `npm ci` from a warm cache, gunicorn started from
//! a release whose build was made by a release long pruned. What is checked is what the app
//! would import: each release's own interpreter is asked which version it runs. The output
//! store's own rules are in `outputs`.

mod killed;
mod node;
mod outputs;
mod python;

use std::path::Path;
use std::process::Command;

use crate::support::apps::*;
use crate::support::*;

/// A virtualenv per requirements.txt, as README shows it; `EXTRA` takes more steps.
const VENV: &str = r#"
[deploy]
root = "ROOT"
branches = ["main", "next"]
keep_releases = KEEP

[env]
PIP_NO_INDEX = "1"
PIP_FIND_LINKS = "WHEELS"

[[step]]
name = "install"
run = "/usr/bin/python3 -m venv .venv && .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt"
inputs = ["requirements.txt"]
outputs = [".venv"]
key = "/usr/bin/python3 --version"
timeout = "5m"
"#;

fn venv_config(keep: usize, extra: &str) -> String {
    format!(
        "{}{extra}",
        VENV.replace("KEEP", &keep.to_string())
            .replace("WHEELS", wheelhouse().to_str().unwrap())
    )
}

const OLD: &str = "2.1.2";
const NEW: &str = "2.2.0";

fn pin(version: &str) -> String {
    format!("itsdangerous=={version}\n")
}

/// The itsdangerous a release's own interpreter imports, asked the way the app would.
#[track_caller]
fn imported_version(release: &Path) -> String {
    let python = release.join(".venv/bin/python");
    let mut cmd = Command::new(&python);
    cmd.args([
        "-W",
        "ignore",
        "-c",
        "import itsdangerous; print(itsdangerous.__version__)",
    ]);
    run(
        &mut cmd,
        format!("{} -c 'import itsdangerous'", python.display()),
    )
    .success()
    .stdout()
    .trim()
    .to_string()
}

fn live_version(server: &Server) -> String {
    imported_version(&server.root.join("current"))
}
