//! The handover through the other two kinds of proxy, Caddy switched through its admin API
//! and nginx driven by a command of the user's (as HAProxy's runtime API or any script would
//! be), and with unix sockets for slots; each under load.

use crate::support::apps::*;
use crate::support::proxy::{changes, Caddy, Clients, Nginx};
use crate::support::*;
use pretty_assertions::assert_eq;
use std::time::Duration;

/// A server with `proxy_lines` as `[serve.proxy]`'s way to switch and `url` as its public
/// address; v1 is pushed and must be served there.
fn first_deploy(server: &Server, proxy_lines: &str, url: &str) -> (Clone, String, [String; 2]) {
    let root = server.root.clone();
    let slots = [closed_port(), closed_port()].map(|p| format!("127.0.0.1:{p}"));
    // Only for the placeholders of the shared config: this nginx never runs.
    let unused = Nginx::configure(&server.path().join("placeholders"), "127.0.0.1:9");
    let config = super::handover::config(
        &root,
        &slots,
        &unused,
        &[
            ("test = \"sudo -n /usr/sbin/nginx -t -q\"\n", ""),
            ("reload = \"sudo -n /usr/bin/systemctl reload nginx\"\n", ""),
        ],
    );
    let nginx_line = format!("nginx = \"{}\"", unused.upstream.display());
    assert!(config.contains(&nginx_line), "{config}");
    let config = config.replace(&nginx_line, proxy_lines).replace(
        &format!("url = \"{}\"", unused.url("")),
        &format!("url = \"{url}\""),
    );
    let (clone, v1) = super::handover::sample_app(server, &config);
    clone
        .push()
        .success()
        .stderr_has("proxy: ok after")
        .stderr_has(&format!("ats-hook: deployed {}", &v1[..7]));
    assert_eq!(get(url).unwrap().trim(), v1);
    (clone, v1, slots)
}

/// Deploys a change under four keep-alive clients on `port`: none fails, each sees the
/// commit change once.
fn deploy_under_load(clone: &Clone, port: u16, v1: &str) -> String {
    let v2 = clone.commit_file("NOTES", "second\n");
    let clients = Clients::start(port, "", 4);
    std::thread::sleep(Duration::from_millis(500));
    let push = clone.push();
    std::thread::sleep(Duration::from_millis(500));
    push.success()
        .stderr_has(&format!("ats-hook: deployed {}", &v2[..7]));
    for (n, seen) in clients.stop().iter().enumerate() {
        assert_eq!(seen.failures, Vec::<String>::new(), "client {n}");
        assert_eq!(changes(seen), [v1, v2.as_str()], "client {n}");
    }
    v2
}

/// Kills what the slots and workers of `server` run.
fn stop_all(server: &Server) {
    for dir in ["slots", "workers"] {
        let dir = server.root.join(".ats-hook").join(dir);
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(pid) = state["pid"].as_i64() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[test]
fn caddy_switches_through_its_admin_api_under_load() {
    let server = Server::new();
    let caddy = Caddy::start(server.path(), &format!("127.0.0.1:{}", closed_port()));
    let (clone, v1, slots) = first_deploy(
        &server,
        &format!("caddy = \"{}\"", caddy.admin),
        &caddy.url(""),
    );
    let v2 = deploy_under_load(&clone, caddy.port, &v1);
    let status = server.ats(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    assert_eq!(json["handover"]["live_slot"], "b");
    assert_eq!(json["handover"]["proxy_as_recorded"], true);
    assert_eq!(json["handover"]["proxy_points_at"], slots[1].as_str());
    assert_eq!(get(&caddy.url("")).unwrap().trim(), v2);
    server
        .ats(&["check"])
        .success()
        .stdout_has(&format!("switch:    PATCH {}/upstreams", caddy.admin));
    stop_all(&server);
}

#[test]
fn a_command_switches_any_proxy_under_load() {
    let server = Server::new();
    let nginx = Nginx::start(server.path(), &format!("127.0.0.1:{}", closed_port()));
    let upstream = nginx.upstream.display().to_string();
    let command = format!(
        "printf 'server %s;\\\\n' \\\"$ATS_SLOT_ADDR\\\" > {upstream}.new && mv {upstream}.new {upstream} && {}",
        nginx.reload_command()
    );
    let (clone, v1, slots) =
        first_deploy(&server, &format!("command = \"{command}\""), &nginx.url(""));
    let v2 = deploy_under_load(&clone, nginx.port, &v1);
    assert_eq!(get(&nginx.url("")).unwrap().trim(), v2);
    assert_eq!(nginx.points_at(), slots[1]);
    assert_eq!(server.last_record()["slot"], "b");
    stop_all(&server);
}

#[test]
fn unix_socket_slots_hand_over_under_load() {
    let server = Server::new();
    let run = server.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let slots = ["a.sock", "b.sock"].map(|name| format!("unix:{}", run.join(name).display()));
    let nginx = Nginx::start(server.path(), &format!("127.0.0.1:{}", closed_port()));
    let config = super::handover::config(
        &server.root,
        &slots,
        &nginx,
        &[
            ("sudo -n /usr/sbin/nginx -t -q", &nginx.test_command()),
            (
                "sudo -n /usr/bin/systemctl reload nginx",
                &nginx.reload_command(),
            ),
            // No URL reaches a socket: the probe asks it with curl, for the new commit.
            (
                "url = \"http://{addr}/\"",
                "command = \"curl -sf --unix-socket \\\"$ATS_SLOT_SOCKET\\\" http://app/ | grep -q \\\"$ATS_COMMIT\\\"\"",
            ),
        ],
    );
    let (clone, v1) = super::handover::sample_app(&server, &config);
    clone
        .push()
        .success()
        .stderr_has("slot a: started 2")
        .stderr_has(&format!("on {} (pid ", slots[0]))
        .stderr_has("health of slot a: ok after")
        .stderr_has(&format!("ats-hook: deployed {}", &v1[..7]));
    assert_eq!(nginx.points_at(), slots[0]);
    let v2 = deploy_under_load(&clone, nginx.port, &v1);
    assert_eq!(nginx.points_at(), slots[1]);
    assert_eq!(get(&nginx.url("")).unwrap().trim(), v2);
    // The old slot's server is gone, and its socket with it.
    assert!(!run.join("a.sock").exists());
    stop_all(&server);
}
