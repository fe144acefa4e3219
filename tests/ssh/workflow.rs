//! The GitHub Actions deploy job's shell, run for real against the server: it passes and
//! fails with the deploy.

use crate::support::system::SshSetup;
use crate::support::*;
use pretty_assertions::assert_eq;

use super::*;

/// The `run:` script of the deploy job in the shipped workflow, and the job's settings.
fn deploy_job_script() -> String {
    workflow_deploy_script(
        "deploy.yml",
        r#"
assert deploy["concurrency"]["group"] and deploy["concurrency"]["cancel-in-progress"] is False
for name in ["SSH_DEPLOYMENT_KEY", "KNOWN_DEPLOYMENT_HOSTS", "STAGING_REMOTE_REPO"]:
    assert env[name] == "${{ secrets.%s }}" % name, env
"#,
    )
}

fn run_deploy_job(setup: &SshSetup, clone: &Clone, script: &str) -> Run {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = command("bash", home.path());
    cmd.arg("-c")
        .arg(script)
        .current_dir(&clone.dir)
        .env(
            "SSH_DEPLOYMENT_KEY",
            std::fs::read_to_string(&setup.key).unwrap(),
        )
        .env(
            "KNOWN_DEPLOYMENT_HOSTS",
            setup
                .keys_output
                .lines()
                .filter(|l| l.starts_with("[127.0.0.1]:"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .env("STAGING_REMOTE_REPO", &setup.url);
    run(&mut cmd, "the deploy job")
}

#[test]
fn the_workflow_deploy_job_passes_and_fails_with_the_deploy() {
    let script = deploy_job_script();
    for hook in ["post-receive", "pre-receive"] {
        let setup = SshSetup::new(hook, CONFIG);
        let clone = setup.clone();
        let sha = clone.commit_file("app.py", "v1");
        run_deploy_job(&setup, &clone, &script)
            .success()
            .stdout_has(&format!("ats-hook: deployed {}", &sha[..7]));
        assert_eq!(
            std::fs::read_to_string(setup.root.join("current/version.txt"))
                .unwrap()
                .trim(),
            sha
        );

        run_deploy_job(&setup, &clone, &script)
            .success()
            .stdout_has("nothing to deploy");

        clone.write("broken", "");
        clone.commit("broken");
        let job = run_deploy_job(&setup, &clone, &script);
        job.failure();
        match hook {
            "post-receive" => job.stdout_has("::error::the deploy did not succeed: ats-hook: deploy FAILED at step build (exit 5)"),
            _ => job.stdout_has("::error::git push failed"),
        };
        assert_eq!(
            std::fs::read_to_string(setup.root.join("current/version.txt"))
                .unwrap()
                .trim(),
            sha,
            "{hook}"
        );
    }
}
