//! The Debian package, installed with dpkg on this machine: the binary runs, every manual page
//! renders, bash completes, lintian finds no error, and removing it leaves nothing. And the
//! manual pages against `--help`, page by page.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// The subcommands `--help` of `args` lists (nested ones as `keys add`).
fn subcommands(args: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = command(env!("CARGO_BIN_EXE_ats-hook"), Path::new("/"));
    cmd.args(args).arg("--help");
    let help = run(&mut cmd, format!("ats-hook {} --help", args.join(" ")));
    let stdout = help.success().stdout();
    let Some((_, listed)) = stdout.split_once("Commands:\n") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for line in listed.lines() {
        let Some(name) = line
            .strip_prefix("  ")
            .and_then(|l| l.split_whitespace().next())
        else {
            break;
        };
        if name == "help" || line.starts_with("   ") {
            continue;
        }
        let mut path: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        path.push(name.to_string());
        let nested: Vec<&str> = path.iter().map(String::as_str).collect();
        found.extend(subcommands(&nested));
        found.push(path);
    }
    found
}

/// The long options a help text or a manual page names.
fn long_options(text: &str) -> std::collections::BTreeSet<String> {
    // roff writes a hyphen as `\-`, and fonts as `\fB` … `\fR`.
    let text = text
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "");
    let mut options = std::collections::BTreeSet::new();
    for (at, _) in text.match_indices("--") {
        let name: String = text[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if name.len() > 1 && !matches!(text[..at].chars().last(), Some(c) if c.is_alphanumeric()) {
            options.insert(format!("--{name}"));
        }
    }
    options
}

#[test]
fn every_subcommand_has_a_manual_page_with_the_options_of_its_help() {
    let dir = tempfile::tempdir().unwrap();
    let mut man = command(env!("CARGO_BIN_EXE_ats-hook"), dir.path());
    man.args(["man", "--dir"]).arg(dir.path());
    run(&mut man, "ats-hook man --dir").success();
    let all = subcommands(&[]);
    assert!(all.len() >= 15, "{all:?}");
    for path in std::iter::once(Vec::new()).chain(all) {
        let page_name = std::iter::once("ats-hook".to_string())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join("-");
        let page = dir.path().join(format!("{page_name}.1"));
        let page = std::fs::read_to_string(&page)
            .unwrap_or_else(|err| panic!("no manual page for `{}`: {err}", path.join(" ")));
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let mut help = command(env!("CARGO_BIN_EXE_ats-hook"), dir.path());
        help.args(&args).arg("--help");
        let help = run(&mut help, "help").success().stdout();
        // Only the options section: the description may mention other commands' options.
        let options_of = |text: &str, start: &str| {
            text.split_once(start)
                .map(|(_, rest)| long_options(rest))
                .unwrap_or_default()
        };
        let in_help = options_of(&help, "Options:");
        let in_page = options_of(&page, ".SH OPTIONS");
        assert!(!in_help.is_empty(), "`{}` lists no options", path.join(" "));
        assert_eq!(in_page, in_help, "the page of `{}`", path.join(" "));
    }
}

/// The package `packaging/build-deb` made (tests/run builds it first), or a new one.
fn package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let find = || {
        std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "deb")
                        && p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("ats-hook_")
                })
                .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        })
    };
    if let Some(deb) = find() {
        return deb;
    }
    let build = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-deb"))
        .status()
        .unwrap();
    assert!(build.success(), "packaging/build-deb failed");
    find().expect("packaging/build-deb made no package")
}

/// What bash offers for `line` with the completion script `script` loaded, one per line.
fn complete(script: &Path, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let run = format!(
        "source {script}\n\
         COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT={point}\n\
         _ats__hook ats-hook '{cur}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script = script.display(),
        words = words.join(" "),
        cword = words.len() - 1,
        point = line.len(),
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    sh(&run)
        .success()
        .stdout()
        .lines()
        .map(str::to_string)
        .collect()
}

#[track_caller]
fn assert_bash_completes(script: &Path) {
    for (line, wanted) in [
        ("ats-hook sta", "status"),
        ("ats-hook status --j", "--json"),
        ("ats-hook keys a", "add"),
        ("ats-hook keys add --allow", "--allow-rollback"),
        ("ats-hook rollback --rem", "--remote"),
    ] {
        let offered = complete(script, line);
        assert!(
            offered.iter().any(|o| o == wanted),
            "`{line}<TAB>` offers {offered:?}, not `{wanted}`"
        );
    }
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(env!("CARGO_BIN_EXE_ats-hook"), dir.path());
    cmd.args(["completions", "bash"]);
    let script = dir.path().join("ats-hook.bash");
    std::fs::write(
        &script,
        run(&mut cmd, "completions bash").success().stdout(),
    )
    .unwrap();
    assert_bash_completes(&script);
}

fn sh(script: &str) -> Run {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script]);
    run(&mut cmd, script.to_string())
}

#[test]
fn the_debian_package_installs_runs_completes_and_removes_cleanly() {
    crate::support::system::require_root();
    let deb = package();
    let deb = deb.to_str().unwrap();
    // As a user installs it.
    sh(&format!("dpkg -i {deb}")).success();
    let files: Vec<String> = sh("dpkg -L ats-hook")
        .success()
        .stdout()
        .lines()
        .map(str::to_string)
        .filter(|path| Path::new(path).is_file())
        .collect();
    assert!(
        files.contains(&"/usr/bin/ats-hook".to_string()),
        "{files:?}"
    );

    sh("/usr/bin/ats-hook --version")
        .success()
        .stdout_has("ats-hook 0.")
        .stdout_has("(commit ");
    let demo = tempfile::tempdir().unwrap();
    sh(&format!(
        "cd {0} && HOME={0} /usr/bin/ats-hook quickstart --dir {0}/demo",
        demo.path().display()
    ))
    .success()
    .stdout_has("remote: ats-hook: deployed");
    assert!(demo
        .path()
        .join("demo/server/app/current/build/version.txt")
        .is_file());

    // Every manual page renders.
    let pages: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("/usr/share/man/man1/") && f.ends_with(".1.gz"))
        .collect();
    assert!(pages.len() >= 15, "{pages:?}");
    assert!(pages.iter().any(|p| p.ends_with("/ats-hook-status.1.gz")));
    for page in &pages {
        sh(&format!("MANWIDTH=80 man -l {page} | col -b"))
            .success()
            .stdout_has("NAME")
            .stdout_has("SYNOPSIS");
    }

    // bash completes subcommands and their flags.
    assert_bash_completes(Path::new("/usr/share/bash-completion/completions/ats-hook"));
    assert!(
        Path::new("/usr/share/zsh/vendor-completions/_ats-hook").is_file()
            && Path::new("/usr/share/fish/vendor_completions.d/ats-hook.fish").is_file()
    );
    for doc in [
        "config.example.toml",
        "README.md",
        "SECURITY.md",
        "contrib/examples/django-gunicorn.toml",
        "contrib/sudoers/ats-hook-app",
        "contrib/sudoers/ats-hook-handover",
        "contrib/systemd/app@.service",
        "contrib/examples/nginx-gunicorn-handover.toml",
    ] {
        assert!(
            Path::new("/usr/share/doc/ats-hook").join(doc).is_file(),
            "{doc} is not in the package"
        );
    }

    // lintian finds no error.
    let lintian = sh(&format!("lintian --no-tag-display-limit {deb}"));
    let errors: Vec<String> = lintian
        .stdout()
        .lines()
        .filter(|l| l.starts_with("E:"))
        .map(str::to_string)
        .collect();
    assert!(errors.is_empty(), "lintian: {errors:#?}");

    // Removing it leaves nothing behind.
    sh("dpkg -r ats-hook").success();
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left after dpkg -r: {left:?}");
    assert!(!sh("dpkg -s ats-hook")
        .stdout()
        .contains("Status: install ok"));
}
