//! Pointing the proxy at a slot: nginx (the upstream file the site includes, written whole,
//! validated, then a graceful reload), or any proxy through a command.
//!
//! nginx's reload is graceful: new workers take new connections with the new upstream, old
//! workers finish the requests they have (to the old slot, which still runs) and exit. A file
//! that nginx refuses is put back before the reload, so the running nginx never sees it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::slots::{Slot, Slots};
use crate::config::{Address, Proxy};
use crate::sys::files::write_atomically;
use crate::sys::output;
use crate::sys::process::Cmd;

/// What the upstream file says for `addr`, with `backup` while the slot it replaces drains.
pub fn nginx_upstream(addr: &Address, backup: Option<&Address>) -> String {
    let mut text = format!(
        "# written by ats-hook at each handover: the slot that serves. Do not edit.\nserver {addr};\n"
    );
    if let Some(backup) = backup {
        text.push_str(&format!("server {backup} backup;\n"));
    }
    text
}

/// The address the nginx upstream file names now, if it is one ats-hook wrote.
pub fn nginx_points_at(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("server ")?;
        Some(rest.trim_end_matches(';').trim().to_string())
    })
}

/// Points the proxy at `slot`, with `backup` as nginx's fallback. `env` is what a proxy
/// command gets.
pub fn switch(
    proxy: &Proxy,
    slot: &Slot,
    backup: Option<&Slot>,
    env: &BTreeMap<String, String>,
) -> Result<()> {
    if let Some(file) = &proxy.nginx {
        return switch_nginx(proxy, file, &slot.addr, backup.map(|b| &b.addr));
    }
    if let Some(admin) = &proxy.caddy {
        let dial = caddy_dial(&slot.addr);
        let body = serde_json::json!([{ "dial": dial }]).to_string();
        caddy(proxy, &upstreams_url(admin), Some(&body))?;
        output::say(format!(
            "proxy: Caddy sends to `{dial}` (slot {}), set through {}",
            slot.name,
            upstreams_url(admin)
        ));
        return Ok(());
    }
    let command = proxy
        .command
        .as_deref()
        .context("`serve.proxy` has neither `nginx` nor `command`")?;
    let command = command.replace("{addr}", &slot.addr.to_string()).replace(
        "{port}",
        &slot.addr.port().map(|p| p.to_string()).unwrap_or_default(),
    );
    let mut env = env.clone();
    env.extend(Slots::variables(slot));
    run(
        Cmd::shell(&command).envs(&env),
        proxy,
        &format!("`{command}`"),
    )?;
    output::say(format!(
        "proxy: `{command}` points it at slot {}",
        slot.name
    ));
    Ok(())
}

/// Once the old slot drained: the proxy names `live` alone (nginx; a command proxy was never
/// given a backup).
pub fn drop_backup(proxy: &Proxy, live: &Slot) -> Result<()> {
    match &proxy.nginx {
        Some(file) => switch_nginx(proxy, file, &live.addr, None),
        None => Ok(()),
    }
}

fn switch_nginx(
    proxy: &Proxy,
    file: &Path,
    addr: &Address,
    backup: Option<&Address>,
) -> Result<()> {
    let before = std::fs::read(file).ok();
    write_atomically(file, nginx_upstream(addr, backup).as_bytes(), 0o644)
        .context("failed to write nginx's upstream file")?;
    if let Err(err) = run(Cmd::shell(&proxy.test), proxy, &format!("`{}`", proxy.test)) {
        // The running nginx never read it; the next reload (anyone's) must not either.
        put_back(file, before.as_deref())?;
        return Err(err.context(format!(
            "nginx refused the configuration with `{}` naming {addr}; the file is as it was",
            file.display()
        )));
    }
    if let Err(err) = run(
        Cmd::shell(&proxy.reload),
        proxy,
        &format!("`{}`", proxy.reload),
    ) {
        // Not reloaded: the next start or reload of nginx must not read it either.
        put_back(file, before.as_deref())?;
        return Err(err.context(format!(
            "nginx did not reload with `{}` naming {addr}; the file is as it was",
            file.display()
        )));
    }
    let backup = backup
        .map(|b| format!(" (`{b}` its backup while it drains)"))
        .unwrap_or_default();
    output::say(format!(
        "proxy: nginx reloaded with `server {addr};`{backup} in {}",
        file.display()
    ));
    Ok(())
}

/// Puts nginx's file back as it was before (or removes it, when there was none).
fn put_back(file: &Path, before: Option<&[u8]>) -> Result<()> {
    match before {
        Some(before) => write_atomically(file, before, 0o644),
        None => std::fs::remove_file(file)
            .with_context(|| format!("failed to remove `{}`", file.display())),
    }
}

/// Runs a proxy command to its end (a switch half done is worse than one not started), and
/// fails with its last words.
fn run(cmd: Cmd, proxy: &Proxy, label: &str) -> Result<()> {
    let finished = cmd
        .timeout(proxy.timeout.0)
        .uninterruptible()
        .stream(&mut |line| tracing::info!("proxy | {line}"))?;
    if !finished.exit.success() {
        let last = finished
            .tail
            .iter()
            .rev()
            .take(3)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(" / ");
        if last.is_empty() {
            bail!("{label} failed ({})", finished.exit);
        }
        bail!("{label} failed ({}): {last}", finished.exit);
    }
    Ok(())
}

/// What the proxy says now (nginx's file, Caddy's upstreams), to put back when no slot ran the
/// previous release (the first handover, from a server run the older way).
pub fn capture(proxy: &Proxy) -> Option<Vec<u8>> {
    if let Some(admin) = &proxy.caddy {
        return caddy(proxy, &upstreams_url(admin), None)
            .ok()
            .map(String::into_bytes);
    }
    std::fs::read(proxy.nginx.as_ref()?).ok()
}

/// Puts back what `capture` saw, and reloads.
pub fn restore(proxy: &Proxy, before: Option<Vec<u8>>) -> Result<()> {
    if let (Some(admin), Some(before)) = (&proxy.caddy, &before) {
        caddy(
            proxy,
            &upstreams_url(admin),
            Some(&String::from_utf8_lossy(before)),
        )?;
        output::say("proxy: Caddy's upstreams put back as they were");
        return Ok(());
    }
    let (Some(file), Some(before)) = (&proxy.nginx, before) else {
        bail!("no slot ran the previous release, so the proxy has nothing to go back to");
    };
    write_atomically(file, &before, 0o644)?;
    run(Cmd::shell(&proxy.test), proxy, &format!("`{}`", proxy.test))?;
    run(
        Cmd::shell(&proxy.reload),
        proxy,
        &format!("`{}`", proxy.reload),
    )?;
    output::say(format!(
        "proxy: nginx reloaded with `{}` as it was",
        file.display()
    ));
    Ok(())
}

/// How Caddy names an address in `dial`.
fn caddy_dial(addr: &Address) -> String {
    match addr {
        Address::Tcp { .. } => addr.to_string(),
        Address::Unix(path) => format!("unix/{}", path.display()),
    }
}

fn upstreams_url(admin: &str) -> String {
    format!("{}/upstreams", admin.trim_end_matches('/'))
}

/// The address Caddy's handler sends to now (its first upstream), as a slot is written.
pub fn caddy_points_at(proxy: &Proxy) -> Option<String> {
    let text = caddy(proxy, &upstreams_url(proxy.caddy.as_ref()?), None).ok()?;
    let upstreams: serde_json::Value = serde_json::from_str(&text).ok()?;
    let dial = upstreams.get(0)?.get("dial")?.as_str()?;
    Some(match dial.strip_prefix("unix/") {
        Some(path) => format!("unix:{path}"),
        None => dial.to_string(),
    })
}

/// A GET (no body) or a PATCH of JSON to Caddy's admin API; the answer's body.
fn caddy(proxy: &Proxy, url: &str, body: Option<&str>) -> Result<String> {
    let agent = crate::sys::http::agent(proxy.timeout.0, crate::sys::http::Tls::default())?;
    let method = if body.is_some() { "PATCH" } else { "GET" };
    let sent = match body {
        Some(body) => agent
            .patch(url)
            .header("Content-Type", "application/json")
            .send(body.as_bytes()),
        None => agent.get(url).call(),
    };
    let mut response =
        sent.with_context(|| format!("Caddy's admin API did not answer `{method} {url}`"))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    if status != 200 {
        bail!(
            "Caddy's admin API answered HTTP {status} to `{method} {url}`: {}",
            text.trim()
        );
    }
    Ok(text)
}
