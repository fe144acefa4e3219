use super::*;

fn parse(text: &str) -> Result<Config> {
    Config::parse(text, Path::new("/srv/app.git/ats-hook.toml"))
}

#[test]
fn example_config_loads() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(config.deploy.keep_releases, 5);
    assert!(config.selects("refs/heads/main"));
    assert_eq!(config.steps_before_switch().count(), 3);
    assert!(config.steps[2].skippable && !config.steps[1].skippable);
    assert!(config.notify.is_none());
    assert!(config.deploy.recycle_releases);
    assert_eq!(
        config.steps[0].outputs,
        vec![RelPath::new(".venv").unwrap()]
    );
    assert_eq!(config.steps[0].key.as_deref(), Some("python3 --version"));
    assert_eq!(
        config.steps[0].inputs,
        vec![RelPath::new("requirements.txt").unwrap()]
    );
    assert_eq!(config.steps_after_switch().count(), 1);
    let health = config.health.as_ref().unwrap();
    assert_eq!(health.expect_body, None);
    assert_eq!(health.passes, 2);
    assert_eq!(health.settle.0, std::time::Duration::from_secs(10));
    assert_eq!(health.probe_timeout.0, std::time::Duration::from_secs(5));
    assert!(config.restart.start.is_some());
    assert_eq!(config.restart.env, RestartEnv::Clean);
    assert!(config.deploy.revision_file);
    assert_eq!(
        config.restart.timeout.0,
        std::time::Duration::from_secs(120)
    );
    assert_eq!(
        config.env_file(),
        Some(PathBuf::from("/srv/app/shared/.env"))
    );
}

#[test]
fn minimal_config_has_defaults() {
    let config = parse("[deploy]\nroot = \"app\"\n").unwrap();
    assert_eq!(config.deploy.root, Path::new("/srv/app.git/app"));
    assert_eq!(config.default_ref().as_deref(), Some("refs/heads/main"));
    assert!(config.selects("refs/heads/main"));
    assert!(!config.selects("refs/heads/dev"));
    assert!(!config.selects("refs/tags/main"));
    assert!(config.restart.is_empty());
}

#[test]
fn tag_glob_selects_version_tags_only() {
    let config =
        parse("[deploy]\nroot = \"/a\"\nbranches = []\ntags = \"[0-9]*.[0-9]*.[0-9]*\"\n").unwrap();
    assert!(config.selects("refs/tags/1.2.3"));
    assert!(!config.selects("refs/tags/v1.2"));
    assert!(!config.selects("refs/heads/main"));
    assert_eq!(config.default_ref(), None);
}

#[test]
fn unknown_key_names_key_and_line() {
    let err = parse("[deploy]\nroot = \"/a\"\nkeep = 3\n").unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("`/srv/app.git/ats-hook.toml`"), "{text}");
    assert!(text.contains("line 3"), "{text}");
    assert!(text.contains("unknown field `keep`"), "{text}");
}

#[test]
fn bad_duration_names_line() {
    let err = parse(
        "[deploy]\nroot = \"/a\"\n\n[[step]]\nname = \"x\"\nrun = \"true\"\ntimeout = \"ten\"\n",
    )
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("line 7"), "{text}");
    assert!(text.contains("invalid duration `ten`"), "{text}");
}

#[test]
fn paths_must_stay_inside_the_release() {
    for bad in ["../etc", "/etc", "a/../../b", ".", ".git/hooks"] {
        assert!(RelPath::new(bad).is_err(), "{bad}");
    }
    assert_eq!(
        RelPath::new("./media/").unwrap().as_path(),
        Path::new("media")
    );
}

#[test]
fn duplicate_step_names_are_refused() {
    let err = parse(
        "[deploy]\nroot = \"/a\"\n[[step]]\nname = \"a\"\nrun = \"true\"\n[[step]]\nname = \"a\"\nrun = \"true\"\n",
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("two steps are named `a`"));
}

#[test]
fn env_values_may_be_numbers() {
    let config =
        parse("[deploy]\nroot = \"/a\"\n[env]\nPORT = 8000\nfile = \"shared/.env\"\n").unwrap();
    assert_eq!(config.env.vars["PORT"], "8000");
    assert_eq!(config.env_file().unwrap(), Path::new("/a/shared/.env"));
}

#[test]
fn the_env_file_stays_inside_the_deploy_root() {
    for file in ["/etc/nologin", "../other/.env", "shared/../../x", ""] {
        let err = parse(&format!(
            "[deploy]\nroot = \"/a\"\n[env]\nfile = {file:?}\n"
        ))
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("must be a relative path inside the deploy root"),
            "{file}: {err:#}"
        );
    }
}

#[test]
fn health_needs_one_http_url_or_command() {
    let base = "[deploy]\nroot = \"/a\"\n[health]\n";
    for (body, needle) in [
        ("", "set `url`, `command` or `processes`"),
        (
            "url = \"ftp://x/\"\n",
            "must start with `http://` or `https://`",
        ),
        ("url = \"http://x/\"\ncommand = \"true\"\n", "not both"),
        (
            "url = \"https://x/\"\ninsecure = true\n",
            "only for a loopback URL",
        ),
        (
            "url = \"http://127.0.0.1/\"\ninsecure = true\n",
            "are for an `https://` URL",
        ),
        (
            "command = \"true\"\nca_file = \"ca.pem\"\n",
            "not `command`",
        ),
    ] {
        let err = parse(&format!("{base}{body}")).unwrap_err();
        assert!(format!("{err:#}").contains(needle), "{err:#}");
    }
    let config = parse(&format!("{base}url = \"http://127.0.0.1:1/\"\n")).unwrap();
    let health = config.health.unwrap();
    assert_eq!(health.expect_status, 200);
    assert_eq!(health.timeout.0, std::time::Duration::from_secs(30));
}

#[test]
fn rollback_on_failure_needs_after_switch() {
    let err = parse(
        "[deploy]\nroot = \"/a\"\n[[step]]\nname = \"x\"\nrun = \"true\"\nrollback_on_failure = true\n",
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("needs `after_switch = true`"));
}

#[test]
fn outputs_are_checked() {
    let base = "[deploy]\nroot = \"/a\"\n[shared]\npaths = [\"log\"]\n[[step]]\nname = \"x\"\nrun = \"true\"\n";
    for (body, needle) in [
        (
            "inputs = [\"r.txt\"]\n",
            "`step.inputs` of step `x` needs `outputs`",
        ),
        (
            "key = \"python3 --version\"\n",
            "`step.key` of step `x` needs `outputs`",
        ),
        ("outputs = [\"log/x\"]\n", "overlaps the shared path `log`"),
        (
            "outputs = [\"a\"]\ninputs = [\"a/b\"]\n",
            "overlaps its output `a`",
        ),
        (
            "outputs = [\"a\"]\nafter_switch = true\n",
            "not with `after_switch`",
        ),
        (
            "outputs = [\"a/b\"]\n[[step]]\nname = \"y\"\nrun = \"true\"\noutputs = [\"a\"]\n",
            "`a` of step `y` overlaps `a/b` of step `x`",
        ),
    ] {
        let err = parse(&format!("{base}{body}")).unwrap_err();
        assert!(format!("{err:#}").contains(needle), "{body}: {err:#}");
    }
    let config = parse(&format!(
        "{base}outputs = [\"node_modules/\"]\ninputs = [\"package-lock.json\"]\n"
    ))
    .unwrap();
    assert!(config.steps[0].has_outputs());
}

#[test]
fn durations_that_would_overflow_a_deadline_are_refused() {
    for key in ["probe_timeout", "interval", "timeout"] {
        let err = parse(&format!(
            "[deploy]\nroot = \"/a\"\n[health]\nurl = \"http://127.0.0.1:1/\"\n{key} = \"18446744073709551615s\"\n"
        ))
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("is too long: at most 7days"), "{text}");
        assert!(text.contains("line 5"), "{text}");
    }
}

#[test]
fn sizes_parse_and_bad_ones_name_the_line() {
    let config = parse("[deploy]\nroot = \"/a\"\nlog_limit = \"2 MiB\"\n").unwrap();
    assert_eq!(config.deploy.log_limit, Size(2 << 20));
    let err = parse("[deploy]\nroot = \"/a\"\nlog_limit = \"lots\"\n").unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("line 3") && text.contains("invalid size `lots`"),
        "{text}"
    );
}

#[test]
fn untracked_is_gone_with_a_pointer_to_outputs() {
    let err = parse("[deploy]\nroot = \"/a\"\nuntracked = \"keep\"\n").unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("line 3"), "{text}");
    assert!(text.contains("`deploy.untracked` is gone"), "{text}");
    assert!(text.contains("`outputs`"), "{text}");
}

#[test]
fn signal_names_parse() {
    let config = parse(
        "[deploy]\nroot = \"/a\"\n[restart]\nsignal = { pidfile = \"run/app.pid\", signal = \"usr2\" }\n",
    )
    .unwrap();
    assert_eq!(
        config.restart.signal.unwrap().signal.0,
        nix::sys::signal::Signal::SIGUSR2
    );
}

#[test]
fn generated_configs_never_panic() {
    let valid = vec![
        EXAMPLE.as_bytes().to_vec(),
        b"[deploy]\nroot = \"app\"\n".to_vec(),
        b"[deploy]\nroot = \"/a\"\nkeep_releases = 3\nlog_limit = \"1 MiB\"\n[[step]]\nname = \"i\"\nrun = \"true\"\noutputs = [\".venv\"]\ninputs = [\"r.txt\"]\nkey = \"python3 --version\"\n[health]\nurl = \"http://127.0.0.1:1/\"\ntimeout = \"1s\"\n".to_vec(),
    ];
    crate::sys::fuzz::check("configs", crate::sys::fuzz::inputs(valid), |bytes| {
        let text = String::from_utf8_lossy(&bytes);
        match parse(&text) {
            Ok(config) => proptest::prop_assert!(config.deploy.keep_releases >= 2),
            Err(err) => {
                let text = format!("{err:#}");
                proptest::prop_assert!(
                    text.starts_with("invalid config `/srv/app.git/ats-hook.toml`"),
                    "{}",
                    text
                );
            }
        }
        Ok(())
    });
}

const SERVE: &str = r#"
[deploy]
root = "/srv/app"
[serve]
slots = ["127.0.0.1:8001", "127.0.0.1:8002"]
start = ".venv/bin/gunicorn --bind {addr} wsgi:application"
[serve.proxy]
nginx = "/etc/nginx/ats-hook/app/upstream.conf"
url = "http://127.0.0.1/"
[health]
url = "http://{addr}/up"
expect_body = "{commit}"
"#;

#[test]
fn serve_reads_two_slots_and_a_proxy() {
    let config = parse(SERVE).unwrap();
    let serve = config.serve.as_ref().unwrap();
    assert_eq!(serve.slots[0].to_string(), "127.0.0.1:8001");
    assert_eq!(serve.slots[1].port(), Some(8002));
    assert_eq!(serve.drain.0, std::time::Duration::from_secs(30));
    assert_eq!(serve.proxy.test, "nginx -t -q");
    assert_eq!(serve.proxy.reload, "nginx -s reload");
    let unix = parse(
        &SERVE
            .replace(
                r#"["127.0.0.1:8001", "127.0.0.1:8002"]"#,
                r#"["unix:/run/app/a.sock", "unix:/run/app/b.sock"]"#,
            )
            .replace(
                "url = \"http://{addr}/up\"",
                "command = \"curl -sf --unix-socket \\\"$ATS_SLOT_SOCKET\\\" http://app/up\"",
            ),
    )
    .unwrap();
    assert_eq!(
        unix.serve.unwrap().slots[1].to_string(),
        "unix:/run/app/b.sock"
    );
}

#[test]
fn serve_mistakes_are_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"["127.0.0.1:8001", "127.0.0.1:8002"]"#,
            r#"["127.0.0.1:8001"]"#,
            "holds 1 address(es): give two",
        ),
        (
            r#"["127.0.0.1:8001", "127.0.0.1:8002"]"#,
            r#"["127.0.0.1:8001", "127.0.0.1:8001"]"#,
            "both slots are `127.0.0.1:8001`",
        ),
        (
            r#""127.0.0.1:8002""#,
            r#""127.0.0.1:http""#,
            "`http` is not a port",
        ),
        (r#""127.0.0.1:8002""#, r#""8002""#, "is not an address"),
        (
            r#""127.0.0.1:8002""#,
            r#""unix:run/b.sock""#,
            "must be absolute",
        ),
        (
            "--bind {addr}",
            "--bind 127.0.0.1:8000",
            "never names the slot's address",
        ),
        (
            "start = ",
            "unit = \"app@.service\"\nstart = ",
            "set `unit` or `start`, not both",
        ),
        (
            "start = \".venv/bin/gunicorn --bind {addr} wsgi:application\"",
            "unit = \"app.service\"",
            "is not a template unit",
        ),
        (
            "nginx = \"/etc/nginx/ats-hook/app/upstream.conf\"",
            "nginx = \"app.upstream\"",
            "must be an absolute path",
        ),
        (
            "nginx = \"/etc/nginx/ats-hook/app/upstream.conf\"\n",
            "",
            "set `nginx`",
        ),
        (
            "url = \"http://127.0.0.1/\"",
            "url = \"127.0.0.1\"",
            "`serve.proxy.url` `127.0.0.1` must start with",
        ),
        (
            "url = \"http://{addr}/up\"",
            "url = \"http://127.0.0.1:8001/up\"",
            "does not name the slot",
        ),
        (
            "[health]\nurl = \"http://{addr}/up\"\nexpect_body = \"{commit}\"\n",
            "",
            "`serve` needs `[health]`",
        ),
        (
            "[serve.proxy]",
            "[serve.proxy]\nhaproxy = \"x\"",
            "unknown field `haproxy`",
        ),
        (
            "[serve.proxy]",
            "[serve.proxy]\ncaddy = \"http://127.0.0.1:2019/id/app\"",
            "set one of `nginx`, `caddy` and `command`",
        ),
        (
            "nginx = \"/etc/nginx/ats-hook/app/upstream.conf\"",
            "caddy = \"http://192.0.2.1:2019/id/app\"",
            "must be an `http://` URL on loopback",
        ),
    ];
    for (from, to, says) in cases {
        assert!(SERVE.contains(from), "{from}");
        let err = parse(&SERVE.replacen(from, to, 1)).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(says), "{from} -> {to}: {text}");
    }
}

/// The commented-out section of the example from the line `# [from]` to `# [to]` (or the
/// end), uncommented: its table headers and keys.
fn example_section(from: &str, to: Option<&str>) -> String {
    let start = EXAMPLE.find(&format!("# [{from}]\n")).unwrap();
    let end = to.map_or(EXAMPLE.len(), |to| {
        EXAMPLE.find(&format!("# [{to}]")).unwrap()
    });
    EXAMPLE[start..end]
        .lines()
        .filter(|l| l.starts_with("# ") && (l[2..].starts_with('[') || l[2..].contains(" = ")))
        .map(|l| format!("{}\n", &l[2..]))
        .collect()
}

#[test]
fn the_examples_serve_section_parses_once_uncommented() {
    let block = example_section("serve", Some("notify"));
    let text = EXAMPLE.replace(
        "url = \"http://127.0.0.1:8000/\"",
        "url = \"http://{addr}/\"",
    ) + "\n"
        + &block;
    let config = parse(&text).unwrap();
    let serve = config.serve.unwrap();
    assert_eq!(serve.slots.len(), 2);
    assert_eq!(
        serve.proxy.reload,
        "sudo -n /usr/bin/systemctl reload nginx"
    );
}

#[test]
fn the_examples_compose_section_parses_once_uncommented() {
    let block: String = example_section("compose", None)
        .lines()
        .filter(|l| !l.starts_with("web = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = parse(&(EXAMPLE.to_string() + "\n" + &block)).unwrap();
    let compose = config.compose.unwrap();
    assert_eq!(compose.project_name(std::path::Path::new("/srv/x")), "app");
    assert_eq!(compose.port, Some(8000));
    // `web` hands over between slots: it needs `[serve]`.
    let err = parse(&(EXAMPLE.to_string() + "\n" + &block + "web = \"web\"\n")).unwrap_err();
    assert!(format!("{err:#}").contains("needs `[serve]`"), "{err:#}");
}

#[test]
fn the_examples_jobs_section_parses_once_uncommented() {
    let block = example_section("jobs", Some("compose"));
    let config = parse(&(EXAMPLE.to_string() + "\n" + &block)).unwrap();
    assert_eq!(config.jobs.file.to_string(), "schedule.toml");
    assert_eq!(config.jobs.installer, crate::config::Installer::Auto);
    let err = parse(&(EXAMPLE.to_string() + "\n[jobs]\ninstaller = \"at\"\n")).unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown variant `at`"),
        "{err:#}"
    );
}
