//! Rollback that knows the database, against a real PostgreSQL: release 2 adds a column; going
//! back to release 1 puts its code on that schema only when a `down` command reversed it, or
//! with `--force`; otherwise the failed release stays live (`failed-forward`).

use std::path::Path;

use pretty_assertions::assert_eq;

use crate::support::apps::Postgres;
use crate::support::*;

fn config(pg: &Postgres, down: bool) -> String {
    format!(
        "[deploy]\nroot = \"ROOT\"\n[env]\nPGURL = \"{}\"\n\
         [[step]]\nname = \"migrate\"\nrun = \"sh migrate.sh\"\nmigrations = [\"migrations\"]\n{}\
         [health]\ncommand = \"test ! -e broken\"\ntimeout = \"1s\"\ninterval = \"100ms\"\n",
        pg.url(),
        if down { "down = \"sh down.sh\"\n" } else { "" }
    )
}

/// The app: the migration scripts, and migration 0001 (a table).
fn app(server: &Server) -> Clone {
    let clone = server.clone("work");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema-app");
    for script in ["migrate.sh", "down.sh"] {
        clone.write(
            script,
            &std::fs::read_to_string(fixture.join(script)).unwrap(),
        );
    }
    clone.write(
        "migrations/0001_items.sql",
        "CREATE TABLE items (id int);\n",
    );
    clone.write("migrations/down/0001_items.sql", "DROP TABLE items;\n");
    clone
}

/// Release 2: a column, and a health check it fails.
fn add_price(clone: &Clone) {
    clone.write(
        "migrations/0002_price.sql",
        "ALTER TABLE items ADD COLUMN price int;\n",
    );
    clone.write(
        "migrations/down/0002_price.sql",
        "ALTER TABLE items DROP COLUMN price;\n",
    );
    clone.write("broken", "");
    clone.commit("add a price, and break the health check");
}

fn columns(pg: &Postgres) -> String {
    pg.query(
        "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'items'",
    )
}

#[test]
fn without_down_a_failed_release_that_migrated_stays_live_and_rollback_needs_force() {
    let pg = Postgres::start();
    let server = Server::new();
    server.config(&config(&pg, false));
    let clone = app(&server);
    clone.commit("items");
    clone.push().success().stderr_has("applying 0001_items.sql");
    let first = server.live().unwrap();
    assert_eq!(columns(&pg), "id");

    add_price(&clone);
    let push = clone.push();
    push.success()
        .stderr_has("applying 0002_price.sql")
        .stderr_has("NOT switched back: release ")
        .stderr_has(&format!(
            "({first} lacks migrations/0002_price.sql, migrations/down/0002_price.sql)"
        ))
        .stderr_has("no step declares a `down` command")
        .stderr_has("deploy FAILED at health check and stays live (failed-forward)");
    let second = server.live().unwrap();
    assert_ne!(second, first, "old code went back onto the new schema");
    assert_eq!(columns(&pg), "id,price");
    let record = server.last_record();
    assert_eq!(record["state"], "failed-forward");
    let first_record = server
        .records()
        .into_iter()
        .find(|r| r["release"] == first.as_str() && r["state"] == "succeeded")
        .unwrap();
    assert_ne!(record["schema"], first_record["schema"]);
    server.ats(&["releases"]).success().stdout_has("(changed)");

    // `rollback` refuses, and says what to do; nothing changes.
    server
        .ats(&["rollback"])
        .code(1)
        .stderr_has(&format!(
            "rollback refused: release {second} changed the schema"
        ))
        .stderr_has("pass `--force`");
    assert_eq!(server.live().unwrap(), second);
    // With --force it goes, and says so; the schema stays.
    server
        .ats(&["rollback", "--force"])
        .success()
        .stderr_has(&format!(
            "--force: {first}'s code goes onto the schema of {second}"
        ));
    assert_eq!(server.live().unwrap(), first);
    assert_eq!(columns(&pg), "id,price");
}

#[test]
fn with_down_the_switch_back_and_rollback_reverse_the_schema_first() {
    let pg = Postgres::start();
    let server = Server::new();
    server.config(&config(&pg, true));
    let clone = app(&server);
    clone.commit("items");
    clone.push().success();
    let first = server.live().unwrap();

    add_price(&clone);
    clone
        .push()
        .success()
        .stderr_has("applying 0002_price.sql")
        .stderr_has("migrate: reversing its migrations")
        .stderr_has("reversing 0002_price.sql")
        .stderr_has(&format!(
            "switched back, {} is live again",
            &first[first.len() - 7..]
        ));
    assert_eq!(server.live().unwrap(), first);
    assert_eq!(columns(&pg), "id");
    let record = server.last_record();
    assert_eq!(record["state"], "rolled-back");
    let steps = record["steps"].as_array().unwrap();
    assert_eq!(steps.last().unwrap()["name"], "migrate (down)");
    assert_eq!(steps.last().unwrap()["status"], "ok");

    // Release 3 migrates again and goes live; `rollback` reverses it before switching.
    clone.git(&["rm", "-q", "broken"]).success();
    clone.commit("fixed");
    clone.push().success().stderr_has("applying 0002_price.sql");
    assert_eq!(columns(&pg), "id,price");
    server
        .ats(&["rollback"])
        .success()
        .stderr_has("reversing 0002_price.sql")
        .stderr_has("rolled back to");
    assert_eq!(server.live().unwrap(), first);
    assert_eq!(columns(&pg), "id");
    let record = server.last_record();
    assert_eq!(record["action"], "rollback");
    assert_eq!(record["steps"][0]["name"], "migrate (down)");

    // A `down` that fails keeps the release live and the rollback refused.
    clone.write("down.sh", "echo cannot >&2; exit 7\n");
    clone.commit("a down that fails");
    clone.push().success();
    let live = server.live().unwrap();
    server
        .ats(&["rollback", &first])
        .code(1)
        .stderr_has("`down` of step `migrate` failed (exit 7)");
    assert_eq!(server.live().unwrap(), live);
}
