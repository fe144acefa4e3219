//! The app's units read `shared/.env` as their own user, through `ats-hook exec`: PID 1 never
//! reads a file of the deploy user's as root.

use std::path::Path;

use crate::support::system::{Public, User};

#[test]
fn exec_reads_the_env_file_as_the_units_user_and_never_as_root_on_a_users_file() {
    let public = Public::new();
    let user = User::create();
    let bin = public.bin.display().to_string();
    let env = user.home.join("app/shared/.env");
    user.sh(&format!(
        "mkdir -p ~/app/shared && printf 'GREETING=\"hello there\"\\nPORT=8000\\n' > {}",
        env.display()
    ))
    .success();

    // As the unit's user: the variables are there, in the command that replaced it (the same
    // process, as systemd's `$MAINPID` and `Type=notify` need).
    let run = user.sh(&format!(
        "echo $$; exec {bin} exec --env-file {} -- sh -c 'echo $$; echo \"$GREETING on $PORT\"'",
        env.display()
    ));
    run.success().stdout_has("hello there on 8000");
    let lines: Vec<String> = run.stdout().lines().map(str::to_string).collect();
    assert_eq!(
        lines[0], lines[1],
        "exec started a child instead of replacing itself"
    );

    // As root on the deploy user's file (a unit without `User=`): refused, nothing read.
    user.sh(&format!("rm {0}; ln -s /etc/shadow {0}", env.display()))
        .success();
    public
        .ats(&["exec", "--env-file", env.to_str().unwrap(), "--", "env"])
        .failure()
        .stderr_has(&format!(
            "run this as `{}` (the unit's `User=`), never as root",
            user.name
        ))
        .stdout_lacks("root:");

    // Malformed: the line, not its text; missing: nothing added, the server still starts.
    user.sh(&format!(
        "rm {0}; printf 'A=1\\nSECRET=\"hunter2\\n' > {0}",
        env.display()
    ))
    .success();
    user.sh(&format!("{bin} exec --env-file {} -- true", env.display()))
        .failure()
        .stderr_has("at line 2")
        .stderr_lacks("hunter2");
    user.sh(&format!(
        "{bin} exec --env-file {}/nope -- echo started",
        user.home.display()
    ))
    .success()
    .stdout_has("started");
}

#[test]
fn no_shipped_unit_has_pid_1_read_the_deploy_users_env_file() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    for unit in [
        "systemd/app.service",
        "systemd/app-worker.service",
        "ansible/roles/ats_hook/templates/app.service.j2",
        "ansible/roles/ats_hook/templates/app-worker.service.j2",
    ] {
        let text = std::fs::read_to_string(contrib.join(unit)).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(
            !lines.iter().any(|l| l.starts_with("EnvironmentFile=")),
            "{unit} has PID 1 read an env file as root"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ExecStart=") && l.contains(" exec --env-file ")),
            "{unit} does not start through `ats-hook exec`"
        );
    }
}
