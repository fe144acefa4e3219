//! The private Docker engine the Compose tests use, started by `tests/docker-up` (which
//! `tests/run` calls): its socket is `$DOCKER_HOST`, else the one under `target/docker`. A
//! missing engine fails the test with how to start it; nothing is skipped.

use std::path::Path;
use std::process::Command;

use super::run;

/// The engine's address, which every process of a test gets (the hook inherits it from git).
pub fn host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| {
        let socket = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/docker/docker.sock");
        format!("unix://{}", socket.display())
    })
}

/// Fails unless the engine answers and has the offline base image.
pub fn require() {
    super::system::require_root();
    let ok = docker(&["image", "inspect", "--format", "{{.Id}}", "base:bookworm"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Docker engine with the image `base:bookworm` at {}: start it with `eval \"$(tests/docker-up)\"` (tests/run does)",
        host()
    );
}

fn docker(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args).env("DOCKER_HOST", host());
    cmd
}

/// `docker ARGS`, which must succeed; its output, trimmed.
#[track_caller]
pub fn out(args: &[&str]) -> String {
    run(&mut docker(args), format!("docker {}", args.join(" ")))
        .success()
        .stdout()
        .trim()
        .to_string()
}

/// `docker ARGS`, which may fail: its output when it succeeded.
pub fn try_out(args: &[&str]) -> Option<String> {
    let done = run(&mut docker(args), format!("docker {}", args.join(" ")));
    done.output
        .status
        .success()
        .then(|| done.stdout().trim().to_string())
}

/// The running containers of `project`, by name, sorted.
pub fn containers(project: &str) -> Vec<String> {
    let filter = format!("label=com.docker.compose.project={project}");
    let mut names: Vec<String> = out(&["ps", "--filter", &filter, "--format", "{{.Names}}"])
        .lines()
        .map(String::from)
        .collect();
    names.sort();
    names
}

/// The image (id) a container runs.
pub fn image_of(container: &str) -> String {
    out(&["inspect", "--format", "{{.Image}}", container])
}

/// The tags of `project`'s images (`<project>-<service>:<tag>`), sorted.
pub fn images(project: &str) -> Vec<String> {
    let reference = format!("reference={project}-*");
    let mut tags: Vec<String> = out(&[
        "image",
        "ls",
        "--filter",
        &reference,
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ])
    .lines()
    .map(String::from)
    .collect();
    tags.sort();
    tags
}

/// Removes everything of `project`: its containers (one-off ones too), networks, volumes and
/// images. For a test's end.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=com.docker.compose.project={}", self.0);
        if let Some(ids) = try_out(&["ps", "-aq", "--filter", &filter]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                let _ = try_out(&args);
            }
        }
        for kind in ["network", "volume"] {
            if let Some(ids) = try_out(&[kind, "ls", "-q", "--filter", &filter]) {
                for id in ids.split_whitespace() {
                    let _ = try_out(&[kind, "rm", id]);
                }
            }
        }
        for image in images(&self.0) {
            let _ = try_out(&["image", "rm", "-f", &image]);
        }
    }
}

/// A project name of this test's own (tests share the engine).
pub fn project_name(dir: &Path) -> String {
    let name: String = dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("t{}", &name[name.len().saturating_sub(10)..])
}
