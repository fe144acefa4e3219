//! The switch itself failing: nginx refusing the configuration (nothing is reloaded, the file
//! is put back, users keep the old slot), and a release that passes on its own slot but fails
//! through the proxy (nginx goes back to the old slot, which never stopped).

use super::handover::{push_under_load, Handover};
use crate::support::proxy::changes;
use pretty_assertions::assert_eq;

#[test]
fn nginx_refusing_the_configuration_changes_nothing_users_see() {
    let h = Handover::start();
    let conf = h.nginx.dir.join("nginx.conf");
    let good = std::fs::read_to_string(&conf).unwrap();
    let upstream_before = std::fs::read_to_string(&h.nginx.upstream).unwrap();
    // An admin's edit that nginx -t refuses, made while the site runs.
    std::fs::write(&conf, format!("{good}\nthis is not a directive;\n")).unwrap();
    h.clone.commit_file("NOTES", "second\n");
    let (push, seen) = push_under_load(&h, || h.clone.push());
    push.stderr_has("nginx refused the configuration with")
        .stderr_has("the file is as it was")
        .stderr_has(&format!(
            "deploy FAILED at the switch of the proxy, before any request reached it; {} is still live",
            &h.v1[..7]
        ));
    assert_eq!(h.server.last_record()["state"], "failed");
    for (n, client) in seen.iter().enumerate() {
        assert_eq!(client.failures, Vec::<String>::new(), "client {n}");
        assert_eq!(changes(client), [h.v1.as_str()], "client {n}");
    }
    assert_eq!(
        std::fs::read_to_string(&h.nginx.upstream).unwrap(),
        upstream_before
    );
    h.one_slot_serves(&h.v1);

    // Mended, the next push goes through.
    std::fs::write(&conf, good).unwrap();
    let v3 = h.clone.commit_file("NOTES", "third\n");
    h.clone
        .push()
        .success()
        .stderr_has(&format!("ats-hook: deployed {}", &v3[..7]));
    h.one_slot_serves(&v3);
}

#[test]
fn a_release_that_fails_only_through_the_proxy_is_switched_back() {
    let h = Handover::start();
    // Healthy on its own address, but refusing the site's name, as a Django release whose
    // ALLOWED_HOSTS lost it does: nginx forwards `Host: app`.
    h.clone.write(
        "wsgi.py",
        "from app import app\n\ndef application(environ, start_response):\n    if environ.get('HTTP_HOST') == 'app':\n        start_response('400 Bad Request', [])\n        return [b'DisallowedHost\\n']\n    return app(environ, start_response)\n",
    );
    let broken = h.clone.commit("refuses the site's host");
    let (push, seen) = push_under_load(&h, || h.clone.push());
    push.stderr_has("health of slot b: ok after")
        .stderr_has("the new release does not answer through the proxy")
        .stderr_has("HTTP 400")
        .stderr_has("proxy: back on slot a")
        .stderr_has(&format!(
            "deploy FAILED at the switch; switched back, {} is live again",
            &h.v1[..7]
        ));
    // Users may have met the broken release between the switch and the switch back; what they
    // got last is the old one, and never a connection error.
    for (n, client) in seen.iter().enumerate() {
        assert!(
            client.failures.iter().all(|f| f.starts_with("HTTP 400")),
            "client {n}: {:?}",
            client.failures
        );
        assert_eq!(changes(client).last(), Some(&h.v1), "client {n}");
    }
    assert_eq!(h.server.last_record()["state"], "rolled-back");
    assert_eq!(h.server.last_record()["commit"], broken.as_str());
    h.one_slot_serves(&h.v1);
}
