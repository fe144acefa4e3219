//! A Flask app with a Makefile, uWSGI and PostgreSQL; production deploying tags only, each
//! on the virtualenv of its requirements.

use crate::support::apps::*;
use crate::support::*;
use pretty_assertions::assert_eq;
use std::collections::BTreeSet;
use std::time::Duration;

use super::*;

#[test]
fn flask_with_make_uwsgi_touch_reload_and_postgres() {
    let pg = Postgres::start();
    let server = Server::new();
    let root = server.root.clone();
    let port = closed_port();
    let env_file = write_env_file(&root, Some(&pg.url()));
    let config = example_config(
        "flask-uwsgi.toml",
        &[
            ("/srv/app", root.to_str().unwrap()),
            ("127.0.0.1:8000", &format!("127.0.0.1:{port}")),
        ],
    );
    // The first deploy comes before uWSGI runs: nothing to probe yet.
    server.config(config.split("[health]").next().unwrap());
    let clone = server.clone("work");
    copy_sample_app(&clone);
    let v1 = clone.commit("first version");
    let push = clone.push();
    push.success()
        .stderr_has("upgrade-db | applying 0001_items.sql")
        .stderr_has(&format!("ats-hook: deployed {} (main)", &v1[..7]));
    let uwsgi = Uwsgi::start(port, &root, &env_file, &server.path().join("uwsgi.log"));
    wait_for_body(&uwsgi.url(""), &v1, Duration::from_secs(30));
    assert_eq!(get(&uwsgi.url("schema")).unwrap().trim(), "id,name");

    // A migration and a touch: uWSGI reloads into the new release, which the health check sees.
    server.config(&config);
    clone.write(
        "migrations/0002_price.sql",
        "alter table items add column price numeric;\n",
    );
    let v2 = clone.commit("items have a price");
    let push = clone.push();
    push.success()
        .stderr_has("install-deps: reused .venv (requirements.txt, Makefile and `/usr/bin/python3 --version` unchanged since ")
        .stderr_has("upgrade-db | applying 0002_price.sql")
        .stderr_has("restart: touched `wsgi.py`")
        .stderr_has("health: ok after");
    assert!(
        push.summary()
            .starts_with(&format!("ats-hook: deployed {}", &v2[..7])),
        "{}",
        push.summary()
    );
    assert_eq!(get(&uwsgi.url("")).unwrap().trim(), v2);
    assert_eq!(get(&uwsgi.url("schema")).unwrap().trim(), "id,name,price");

    // A migration that fails: the old release keeps serving, the schema is what it expects.
    clone.write(
        "migrations/0003_tags.sql",
        "alter table item_tags add column weight int;\n",
    );
    clone.commit("a migration against a table that does not exist");
    let push = clone.push();
    push.success()
        .stderr_has("0003_tags.sql failed: relation \"item_tags\" does not exist")
        .stderr_has(&format!(
            "deploy FAILED at step upgrade-db (exit 2); {} is still live",
            &v2[..7]
        ));
    assert_eq!(get(&uwsgi.url("")).unwrap().trim(), v2);
    assert_eq!(get(&uwsgi.url("schema")).unwrap().trim(), "id,name,price");
    assert_eq!(
        pg.query("select string_agg(name, ',' order by name) from schema_migrations"),
        "0001_items.sql,0002_price.sql"
    );
}

#[test]
fn production_deploys_tags_only_each_on_the_virtualenv_of_its_requirements() {
    let server = Server::new();
    let root = server.root.clone();
    write_env_file(&root, None);
    server.config(&example_config(
        "tagged-releases.toml",
        &[("/srv/app-production", root.to_str().unwrap())],
    ));
    let clone = server.clone("work");
    copy_sample_app(&clone);
    clone.commit("first version");
    clone
        .push()
        .success()
        .stderr_has("ignored `refs/heads/main`");
    assert!(server.releases().is_empty());
    clone.git(&["tag", "v2-preview"]).success();
    clone
        .push_args(&["v2-preview"])
        .success()
        .stderr_has("ignored `refs/tags/v2-preview`");

    let mut deployed = Vec::new();
    for tag in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
        clone.write("VERSION", tag);
        clone.commit(&format!("release {tag}"));
        clone.git(&["tag", "-a", "-m", tag, tag]).success();
        let push = clone.push_args(&[tag]);
        push.success()
            .stderr_has("check | flask 3.")
            .stderr_has(&format!("({tag})"));
        if deployed.is_empty() {
            push.stderr_has("venv: building .venv");
        } else {
            push.stderr_has(&format!("venv: reused .venv (requirements.txt and `/usr/bin/python3 --version` unchanged since {})", deployed[0]));
        }
        let live = server.live().unwrap();
        assert!(server.root.join("current/.venv/bin/python").exists());
        assert_eq!(server.last_record()["ref"], format!("refs/tags/{tag}"));
        deployed.push(live);
    }
    // keep_releases = 3: the oldest release went; the virtualenv it built stays, because the
    // releases kept run on it.
    let mut kept = deployed[1..].to_vec();
    kept.sort();
    assert_eq!(server.releases(), kept);
    assert_eq!(server.builds("venv"), BTreeSet::from([deployed[0].clone()]));
    assert_eq!(server.live_file("VERSION"), "1.3.0");

    // A tag with other requirements gets its own; the previous tags keep theirs.
    clone.write(
        "requirements.txt",
        &format!(
            "{}itsdangerous\n",
            std::fs::read_to_string(clone.dir.join("requirements.txt")).unwrap()
        ),
    );
    clone.commit("release 1.4.0");
    clone.git(&["tag", "-a", "-m", "1.4.0", "1.4.0"]).success();
    clone
        .push_args(&["1.4.0"])
        .success()
        .stderr_has("venv: building .venv");
    let live = server.live().unwrap();
    assert_eq!(server.build_of(&live, "venv", ".venv"), live);
    assert_eq!(server.build_of(&deployed[3], "venv", ".venv"), deployed[0]);
}
