//! `ats-hook quickstart`: the whole flow on one machine, in one folder.
//!
//! It builds what a user would: a bare repository with ats-hook as its `post-receive` hook and
//! a config, and a clone of a small sample app (an install and a migrate step, a WSGI file to
//! touch). Then it pushes with the real `git` client and shows what the pusher sees.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::sys::process::Cmd;

const SAMPLE_APP: &[(&str, &str, bool)] = &[
    (
        "README.md",
        "# demo app\n\nDeployed by ats-hook on every `git push staging main`.\n",
        false,
    ),
    (
        "wsgi.py",
        "import os\n\n\ndef application(environ, start_response):\n    \"\"\"Serves the version the install step wrote.\"\"\"\n    here = os.path.dirname(os.path.abspath(__file__))\n    with open(os.path.join(here, \"build\", \"version.txt\"), \"rb\") as f:\n        body = f.read()\n    start_response(\"200 OK\", [(\"Content-Type\", \"text/plain\")])\n    return [body]\n",
        false,
    ),
    (
        "bin/install",
        "#!/bin/sh\n# Stands in for `pip install -r requirements.txt`: builds into the release.\nset -eu\nmkdir -p build\nprintf '%s\\n' \"$ATS_COMMIT\" > build/version.txt\necho \"built build/version.txt for commit $ATS_COMMIT\"\n",
        true,
    ),
    (
        "bin/migrate",
        "#!/bin/sh\n# Stands in for `manage.py migrate`: applies each migration once, recording it in\n# shared/, which outlives releases like a database does.\nset -eu\ndb=\"$ATS_DEPLOY_ROOT/shared/db/applied\"\nmkdir -p \"$(dirname \"$db\")\"\ntouch \"$db\"\nfor m in migrations/*.sql; do\n  name=$(basename \"$m\")\n  if grep -qx \"$name\" \"$db\"; then\n    echo \"$name already applied\"\n  else\n    echo \"applying $name\"\n    echo \"$name\" >> \"$db\"\n  fi\ndone\n",
        true,
    ),
    (
        "migrations/0001_initial.sql",
        "CREATE TABLE visit (id integer primary key, at timestamp);\n",
        false,
    ),
];

const CONFIG: &str = r#"# The quickstart's config: see config.example.toml for every key.
[deploy]
root = "ROOT"
branches = ["main"]
keep_releases = 5
lock_timeout = "1m"

[shared]
paths = ["log"]

[[step]]
name = "install"
run = "./bin/install"
timeout = "5m"

[[step]]
name = "migrate"
run = "./bin/migrate"
timeout = "5m"

[restart]
touch = "wsgi.py"
"#;

pub fn run(dir: Option<&Path>, out: &mut dyn Write) -> Result<ExitCode> {
    let base = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
            if std::fs::read_dir(dir)?.next().is_some() {
                bail!(
                    "`{}` is not empty: name a new folder with `--dir`",
                    dir.display()
                );
            }
            dir.canonicalize()?
        }
        None => tempfile::Builder::new()
            .prefix("ats-hook-quickstart-")
            .tempdir()
            .context("failed to create a temporary folder")?
            .keep(),
    };
    let exe = std::env::current_exe().context("failed to find the ats-hook binary")?;
    let bare = base.join("server/app.git");
    let root = base.join("server/app");
    let clone = base.join("laptop/app");

    writeln!(out, "ats-hook quickstart in {}\n", base.display())?;
    writeln!(
        out,
        "1. the server: a bare repository with ats-hook as its post-receive hook"
    )?;
    std::fs::create_dir_all(&bare)?;
    git(
        &base,
        &["init", "--quiet", "--bare", "-b", "main", path_str(&bare)?],
    )?;
    let hook = bare.join("hooks/post-receive");
    std::os::unix::fs::symlink(&exe, &hook)
        .with_context(|| format!("failed to link `{}` to `{}`", hook.display(), exe.display()))?;
    let config = CONFIG.replace("ROOT", path_str(&root)?);
    std::fs::write(bare.join(crate::config::FILE_NAME), config)?;
    writeln!(out, "   {} -> {}", hook.display(), exe.display())?;
    writeln!(
        out,
        "   {}\n",
        bare.join(crate::config::FILE_NAME).display()
    )?;

    writeln!(
        out,
        "2. the laptop: a sample app with an install and a migrate step"
    )?;
    for (path, text, executable) in SAMPLE_APP {
        let file = clone.join(path);
        std::fs::create_dir_all(file.parent().expect("sample paths have a folder"))?;
        std::fs::write(&file, text)?;
        if *executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    git(&clone, &["init", "--quiet", "-b", "main"])?;
    git(&clone, &["add", "."])?;
    git(
        &clone,
        &["commit", "--quiet", "-m", "First version of the demo app"],
    )?;
    git(&clone, &["remote", "add", "staging", path_str(&bare)?])?;
    writeln!(out, "   {}\n", clone.display())?;

    writeln!(out, "3. git push staging main\n")?;
    let push = Cmd::new("git")
        .args(["push", "staging", "main"])
        .dir(&clone)
        .envs(author_env());
    let finished = push.stream(&mut |line| {
        let _ = writeln!(out, "   {}", line.trim_end());
    })?;
    if !finished.exit.success() {
        bail!("`git push staging main` failed ({})", finished.exit);
    }
    let current = root.join("current");
    let live = std::fs::read_link(&current).with_context(|| {
        format!(
            "the push did not deploy: `{}` does not exist",
            current.display()
        )
    })?;
    let version = std::fs::read_to_string(current.join("build/version.txt"))
        .context("the live release has no `build/version.txt`")?;

    writeln!(
        out,
        "\n4. live: {} -> {}",
        current.display(),
        live.display()
    )?;
    writeln!(out, "   build/version.txt holds {}", version.trim())?;
    writeln!(out, "\nWhere to look:")?;
    writeln!(out, "   {}    releases, `current`, shared/", root.display())?;
    writeln!(
        out,
        "   {}    the deploy history",
        root.join(".ats-hook/deploys.jsonl").display()
    )?;
    writeln!(out, "   {} status --repo {}", exe.display(), bare.display())?;
    writeln!(out, "\nPush again:")?;
    writeln!(
        out,
        "   cd {} && echo change >> README.md && git commit -qam change && git push staging main",
        clone.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("`{}` is not UTF-8", path.display()))
}

/// An author for the demo's commit, so it works where git has no identity configured.
fn author_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GIT_AUTHOR_NAME", "ats-hook quickstart"),
        ("GIT_AUTHOR_EMAIL", "quickstart@ats-hook.invalid"),
        ("GIT_COMMITTER_NAME", "ats-hook quickstart"),
        ("GIT_COMMITTER_EMAIL", "quickstart@ats-hook.invalid"),
    ]
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    Cmd::new("git")
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .dir(dir)
        .envs(author_env())
        .read()
        .map(drop)
}
