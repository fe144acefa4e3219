//! The role runs the app under systemd, and a roll fails no request; its units and sudoers
//! rule are the ones in contrib.

use crate::support::*;
use pretty_assertions::assert_eq;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A WSGI app that serves the commit its release was built from, read when gunicorn loads it.
const WSGI_APP: &str = r#"import pathlib

VERSION = pathlib.Path("version.txt").read_text().strip().encode()

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(VERSION)))])
    return [VERSION]
"#;

/// gunicorn in a virtualenv on this machine that every host's app unit runs, from the wheels
/// tests/run fetched.
fn gunicorn(fleet: &Fleet) -> PathBuf {
    let venv = fleet.public.path().join("gunicorn");
    let mut make = Command::new("/usr/bin/python3");
    make.args(["-m", "venv"]).arg(&venv);
    run(&mut make, "python3 -m venv").success();
    let mut install = Command::new(venv.join("bin/pip"));
    install
        .args(["install", "--quiet", "--no-index", "--find-links"])
        .arg(crate::support::apps::wheelhouse())
        .arg("gunicorn");
    run(&mut install, "pip install gunicorn").success();
    venv.join("bin/gunicorn")
}

#[test]
fn the_role_runs_the_app_under_systemd_and_a_roll_fails_no_request() {
    use crate::support::apps::{get, Load, Systemd};

    // One systemd for the three hosts, as if each had its own: its /etc/systemd/system and
    // /etc/sudoers.d are empty folders of its own, where the role writes.
    let units = tempfile::tempdir().unwrap();
    let systemd = Systemd::boot_with_etc(units.path(), &["/etc/sudoers.d"]);
    let fleet = Fleet::in_namespace(3, Some(systemd.pid));
    let push_key = ci_key(&fleet);
    let gunicorn = gunicorn(&fleet);
    let port = closed_port();
    let public_key = std::fs::read_to_string(push_key.with_extension("pub")).unwrap();
    // Each host's unit is named after it: they share this systemd.
    let vars = format!(
        r#"ats_hook_service: "{{{{ inventory_hostname }}}}"
ats_hook_service_command: "{gunicorn} --chdir {{{{ ats_hook_root }}}}/current --workers 2 wsgi:application"
ats_hook_service_listen: "{{{{ ansible_host }}}}:{port}"
ats_hook_config: |
  [[step]]
  name = "build"
  run = 'printf "%s\n" "$ATS_COMMIT" > version.txt'
  [restart]
  systemctl = ["{{{{ ats_hook_service }}}}.service"]
  sudo = true
  [health]
  url = "http://{{{{ ansible_host }}}}:{port}/"
  expect_body = "{{commit}}"
  timeout = "30s"
ats_hook_keys:
  - name: ci
    public_key: "{}"
"#,
        public_key.trim(),
        gunicorn = gunicorn.display()
    );
    set_up(&fleet, &vars).success();
    for host in &fleet.hosts {
        let unit = format!("{}.service", host.name);
        let socket = format!("{}.socket", host.name);
        systemd
            .systemctl(&["is-enabled", &unit, &socket])
            .success()
            .stdout_has("enabled");
        systemd.systemctl(&["is-active", &socket]).success();
        // Not started before a release exists.
        systemd.systemctl(&["is-active", &unit]).failure();
    }
    // Idempotent with the units too.
    let again = fleet.playbook("site.yml", &[]).success().stdout();
    let recap = changed(&again);
    assert!(
        recap.len() == 3 && recap.iter().all(|(_, n)| *n == 0),
        "{again}"
    );

    let source = Clone::new_in(fleet.public.path(), "source");
    source.write("wsgi.py", WSGI_APP);
    let v1 = source.commit("serve the version");
    let ssh = ssh_with(&fleet, &push_key);
    let roll = |commit: &str| roll_with(&fleet, &source, commit, &ssh, "", &[]);
    roll(&v1).success();
    let urls: Vec<String> = fleet
        .hosts
        .iter()
        .map(|host| format!("http://{}:{port}/", host.address))
        .collect();
    for url in &urls {
        assert_eq!(get(url).as_deref(), Ok(v1.as_str()), "{url}");
    }
    // The rule the role wrote lets the deploy user restart its unit, and nothing more.
    let mut stop = systemd.nsenter(&[
        "su",
        "-s",
        "/bin/sh",
        "-c",
        "sudo -n systemctl stop web1.service",
        &fleet.hosts[0].user,
    ]);
    run(&mut stop, "sudo systemctl stop, as the deploy user")
        .failure()
        .stderr_has("sudo: a password is required");

    // Requests across the hosts, without pause, while v2 rolls over them one by one.
    let v2 = source.commit_file(
        "wsgi.py",
        &WSGI_APP.replace("text/plain", "text/plain; charset=utf-8"),
    );
    let load = Load::start(urls.clone());
    let rolled = roll(&v2);
    let served = load.stop();
    rolled.success();
    println!(
        "{} requests during the roll, {} failed, longest {:?}",
        served.requests(),
        served.failures.len(),
        served.longest
    );
    assert_eq!(served.failures, Vec::<String>::new());
    for (n, bodies) in served.bodies.iter().enumerate() {
        // Each host served v1, then v2, and never v1 again once it served v2.
        let switched = bodies.iter().position(|b| *b == v2);
        let switched = switched.unwrap_or_else(|| panic!("{} never served v2", urls[n]));
        assert!(switched > 0, "{} served v2 from the start", urls[n]);
        assert!(bodies[..switched].iter().all(|b| *b == v1), "{bodies:?}");
        assert!(bodies[switched..].iter().all(|b| *b == v2), "{bodies:?}");
    }
    for url in &urls {
        assert_eq!(get(url).as_deref(), Ok(v2.as_str()), "{url}");
    }

    // A changed unit: site.yml reloads it into systemd and restarts the app that runs, its
    // socket keeping the requests meanwhile.
    let main_pid = |unit: &str| {
        systemd
            .systemctl(&["show", "--property", "MainPID", "--value", unit])
            .success()
            .stdout()
            .trim()
            .to_string()
    };
    let before = main_pid("web1.service");
    let load = Load::start(urls.clone());
    let out = set_up(&fleet, &vars.replace("--workers 2", "--workers 3"));
    let served = load.stop();
    let out = out.success().stdout();
    assert!(
        out.contains("changed: [web1] => (item=web1.service)")
            && out.contains("ok: [web1] => (item=web1.socket)")
            && out.contains("TASK [ats_hook : Restart the app's changed units that run]"),
        "{out}"
    );
    assert_eq!(served.failures, Vec::<String>::new());
    assert!(served.bodies.iter().all(|bodies| !bodies.is_empty()));
    assert_ne!(main_pid("web1.service"), before);
    let unit = systemd
        .systemctl(&["cat", "web1.service"])
        .success()
        .stdout();
    assert!(unit.contains("--workers 3"), "{unit}");
    for url in &urls {
        assert_eq!(get(url).as_deref(), Ok(v2.as_str()), "{url}");
    }
}

/// Directive lines only: no comments, no blank lines, continuations joined, spaces collapsed.
fn directives(text: &str) -> Vec<String> {
    text.replace("\\\n", " ")
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// The role writes the units and the sudoers rule of contrib/, which README and the package
/// ship for installing by hand: rendered by ansible with contrib's names, they say the same.
#[test]
fn the_roles_units_and_sudoers_rule_are_contribs() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let role = contrib.join("ansible/roles/ats_hook");
    let dir = tempfile::tempdir().unwrap();
    let vars = serde_json::json!({
        "ats_hook_user": "deployer",
        "ats_hook_root": "/srv/app",
        "ats_hook_binary": "/usr/bin/ats-hook",
        "ats_hook_service": "app",
        "ats_hook_worker_command": "/srv/app/current/.venv/bin/celery --app app worker --loglevel INFO",
    });
    let ansible = ansible_playbook().with_file_name("ansible");
    let mut handover = vars.clone();
    handover["ats_hook_handover"] = serde_json::json!(true);
    for (template, unit, expected, vars) in [
        (
            "app.service.j2",
            "app.service",
            "systemd/app.service",
            &vars,
        ),
        ("app.socket.j2", "app.socket", "systemd/app.socket", &vars),
        (
            "app-worker.service.j2",
            "app-worker.service",
            "systemd/app-worker.service",
            &vars,
        ),
        ("sudoers.j2", "sudoers", "sudoers/ats-hook-app", &vars),
        (
            "app@.service.j2",
            "app@.service",
            "systemd/app@.service",
            &handover,
        ),
        (
            "sudoers-handover.j2",
            "sudoers-handover",
            "sudoers/ats-hook-handover",
            &handover,
        ),
    ] {
        let dest = dir.path().join(unit);
        let mut cmd = command(&ansible, dir.path());
        cmd.args(["localhost", "-c", "local", "-i", "localhost,"])
            .args(["-m", "ansible.builtin.template", "-a"])
            .arg(format!(
                "src={} dest={}",
                role.join("templates").join(template).display(),
                dest.display()
            ))
            .arg("-e")
            .arg(format!("@{}", role.join("defaults/main.yml").display()))
            .arg("-e")
            .arg(format!("@{}", role.join("vars/main.yml").display()))
            .arg("-e")
            .arg(vars.to_string())
            .arg("-e")
            .arg(format!(
                "ansible_python_interpreter={}",
                ansible.with_file_name("python3").display()
            ))
            .current_dir(dir.path())
            .env("ANSIBLE_HOME", dir.path().join("ansible-home"))
            .env("ANSIBLE_LOCAL_TEMP", dir.path().join("ansible-tmp"))
            .env("ANSIBLE_REMOTE_TEMP", dir.path().join("ansible-remote-tmp"));
        run(&mut cmd, format!("ansible -m template {template}")).success();
        let rendered = std::fs::read_to_string(&dest).unwrap();
        let mut ours = directives(&rendered);
        let mut theirs = directives(&std::fs::read_to_string(contrib.join(expected)).unwrap());
        if unit.starts_with("sudoers") {
            // Each rule's alias is named after its service: several apps share /etc/sudoers.d.
            ours = ours
                .iter()
                .map(|l| l.replace("ATS_HOOK_APP", "ALIAS"))
                .collect();
            theirs = theirs
                .iter()
                .map(|l| l.replace("ATS_HOOK_APP", "ALIAS"))
                .collect();
        }
        assert_eq!(
            ours, theirs,
            "{template} against contrib/{expected}:\n{rendered}"
        );
    }
}
