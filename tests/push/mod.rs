//! Pushes that deploy: the release, shared paths, environment, restart, history, selection;
//! what the hook reads on stdin, push options, pushes at once, gate mode, the app's steps.

mod concurrency;
mod deploys;
mod gate;
mod options;
mod restart;
mod stdin;
mod steps;

use crate::support::*;

const APP_CONFIG: &str = r#"
[deploy]
root = "ROOT"
keep_releases = 3

[shared]
paths = [".env", "log", "media/uploads"]

[env]
APP_MODE = "production"
PORT = 8000
file = "shared/.env"

[[step]]
name = "install"
run = "echo installing; printf '%s|%s|%s|%s|%s|%s|%s|%s|%s\n' \"$ATS_RELEASE_ID\" \"$ATS_COMMIT\" \"$ATS_PREVIOUS_COMMIT\" \"$ATS_REF\" \"$ATS_DEPLOY_ROOT\" \"$ATS_RELEASE_DIR\" \"$APP_MODE\" \"$PORT\" \"$SECRET_KEY\" > vars.txt"

[[step]]
name = "migrate"
run = "echo migrating >&2; pwd > pwd.txt"

[restart]
touch = "wsgi.py"
"#;

fn app_server() -> Server {
    let server = Server::new();
    server.config(APP_CONFIG);
    std::fs::create_dir_all(server.root.join("shared")).unwrap();
    std::fs::write(
        server.root.join("shared/.env"),
        "# secrets\nSECRET_KEY=\"s3cret value\"\n",
    )
    .unwrap();
    server
}
