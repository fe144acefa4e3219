//! From an empty server to `git push staging main` over real SSH, with a deploy key that can do
//! nothing else; and the GitHub Actions deploy job's shell, run for real against it.

mod lfs;
mod reads;
mod server;
mod workflow;

use crate::support::*;

const CONFIG: &str = r#"
[deploy]
root = "ROOT"
[[step]]
name = "build"
run = 'test ! -e broken || { echo "build broke" >&2; exit 5; }; printf "%s\n" "$ATS_COMMIT" > version.txt'
"#;

fn git_over_ssh(clone: &Clone, ssh: &str, args: &[&str]) -> Run {
    let mut cmd = command("git", &clone.dir);
    cmd.args(args)
        .current_dir(&clone.dir)
        .env("GIT_SSH_COMMAND", ssh);
    run(&mut cmd, format!("git {}", args.join(" ")))
}
