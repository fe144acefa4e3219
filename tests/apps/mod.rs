//! The flows our users run today, end to end, with the real parts: a Flask app with a Makefile,
//! uWSGI and PostgreSQL; gunicorn and a worker under a real systemd, pushed to over SSH by a
//! user whose only privilege is the shipped sudoers rule; production tags, each on the
//! virtualenv of its requirements; and a deploy under load that fails no request. The configs
//! are the ones in contrib/examples/.

mod django;
mod flask;
mod systemd;

use std::path::Path;

use crate::support::apps::*;

/// shared/.env for the sample app: where pip finds its wheels, and the database.
fn write_env_file(root: &Path, database_url: Option<&str>) -> std::path::PathBuf {
    let shared = root.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let mut text = format!(
        "PIP_NO_INDEX=1\nPIP_FIND_LINKS={}\n",
        wheelhouse().display()
    );
    if let Some(url) = database_url {
        text.push_str(&format!("DATABASE_URL={url}\n"));
    }
    let path = shared.join(".env");
    std::fs::write(&path, text).unwrap();
    path
}
