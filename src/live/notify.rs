//! `[notify]`: telling a team about deploys and rollbacks.
//!
//! Once a deploy or rollback is recorded and the deploy lock is let go, the configured `command`
//! runs with the record as JSON on its stdin, and the `webhook` receives it as a JSON POST (or,
//! with `slack = true`, a `{"text": …}` message). Each has a timeout. A notification that fails
//! or hangs is reported in the output and the deploy's log, and changes nothing else: the
//! deploy's outcome, its exit status and the history stand. The webhook's URL is never printed
//! past its host, since chat webhooks carry their token in the path.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::{Notify, NotifyOn};
use crate::state::record::{Action, DeployRecord, State};
use crate::sys::output;
use crate::sys::process::{Cmd, Exit};

/// What `record` is, as `notify.on` names it; `None` for a record that is no outcome.
pub fn event(record: &DeployRecord) -> Option<NotifyOn> {
    match (record.action, record.state) {
        (Action::Rollback, _) => Some(NotifyOn::Rollback),
        (_, State::Succeeded) => Some(NotifyOn::Succeeded),
        (_, State::Failed | State::Interrupted | State::FailedForward) => Some(NotifyOn::Failed),
        (_, State::RolledBack) => Some(NotifyOn::RolledBack),
        (_, State::Switching | State::Superseded | State::Unchanged) => None,
    }
}

/// Tells `notify`'s command and webhook about `record`, whose last line for the pusher was
/// `summary`, when `notify.on` asks for its outcome. Never fails: what goes wrong is said.
pub fn send(notify: &Notify, root: &Path, record: &DeployRecord, summary: &str) {
    let Some(event) = event(record).filter(|e| notify.on.contains(e)) else {
        return;
    };
    let payload = serde_json::to_value(record).unwrap_or(Value::Null);
    deliver(
        notify,
        root,
        (event, payload),
        summary,
        &record.about(),
        what_stands(record),
    );
}

/// Tells about a failed or timed-out run of a scheduled job, when `notify.on` has `job-failed`.
pub fn send_job_failure(
    notify: &Notify,
    root: &Path,
    run: &crate::live::jobs::history::RunRecord,
    summary: &str,
) {
    if !notify.on.contains(&NotifyOn::JobFailed) || !run.outcome.is_failure() {
        return;
    }
    let payload = serde_json::to_value(run).unwrap_or(Value::Null);
    deliver(
        notify,
        root,
        (NotifyOn::JobFailed, payload),
        summary,
        "",
        "job's outcome",
    );
}

/// Runs the command and posts to the webhook: `payload` with the event, host, root and summary
/// added; `stands` names what a failure here leaves as it is.
fn deliver(
    notify: &Notify,
    root: &Path,
    (event, mut payload): (NotifyOn, Value),
    summary: &str,
    about: &str,
    stands: &str,
) {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Value::Object(fields) = &mut payload {
        fields.insert("event".into(), event.as_str().into());
        fields.insert("host".into(), host.clone().into());
        fields.insert("root".into(), root.display().to_string().into());
        fields.insert("summary".into(), summary.into());
    }
    let json = serde_json::to_vec(&payload).unwrap_or_default();
    if let Some(command) = &notify.command {
        if let Err(err) = run_command(command, notify, root, event, &json) {
            output::warn(format!("notify: {err:#}; the {stands} stands"));
        }
    }
    if let Some(url) = &notify.webhook {
        let body = if notify.slack {
            let text = format!("{host} ({}): {summary}{about}", root.display());
            serde_json::to_vec(&serde_json::json!({ "text": slack_escaped(&text) }))
                .unwrap_or_default()
        } else {
            json
        };
        match post(url, notify, root, &body) {
            Ok(status) => output::say(format!(
                "notify: posted the {} to {} (HTTP {status})",
                event.as_str(),
                crate::sys::http::redact(url)
            )),
            Err(err) => output::warn(format!(
                "notify: {}; the {stands} stands",
                crate::sys::http::scrub(&format!("{err:#}"), url),
            )),
        }
    }
}

fn what_stands(record: &DeployRecord) -> &'static str {
    match record.action {
        Action::Deploy => "deploy's outcome",
        Action::Rollback => "rollback's outcome",
    }
}

/// Runs the command in the deploy root with the record on stdin; its output goes to the pusher
/// and the log, prefixed `notify`.
fn run_command(
    command: &str,
    notify: &Notify,
    root: &Path,
    event: NotifyOn,
    json: &[u8],
) -> Result<()> {
    let mut lines = output::StepLines::new("notify", "notify".len());
    let finished = Cmd::shell(command)
        .dir(root)
        .env("ATS_NOTIFY_EVENT", event.as_str())
        .stdin_bytes(json.to_vec())
        .timeout(notify.timeout.0)
        .uninterruptible()
        .stream(&mut |line| lines.line(line));
    lines.finish();
    let finished = finished.with_context(|| format!("command `{command}` could not run"))?;
    match finished.exit {
        Exit::Code(0) => Ok(()),
        exit => bail!("command `{command}` failed ({exit})"),
    }
}

/// POSTs `body` as JSON; the answer's status when it is a success.
fn post(url: &str, notify: &Notify, root: &Path, body: &[u8]) -> Result<u16> {
    let ca_file = notify.ca_file.as_ref().map(|file| root.join(file));
    let agent = crate::sys::http::agent(
        notify.timeout.0,
        crate::sys::http::Tls {
            ca_file: ca_file.as_deref(),
            insecure: false,
        },
    )?;
    let response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|err| match err {
            ureq::Error::Timeout(_) => anyhow::anyhow!(
                "webhook {} gave no answer within {}",
                crate::sys::http::redact(url),
                notify.timeout
            ),
            other => anyhow::anyhow!("webhook {} failed: {other}", crate::sys::http::redact(url)),
        })?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        bail!(
            "webhook {} answered HTTP {status}",
            crate::sys::http::redact(url)
        );
    }
    Ok(status)
}

/// Slack's escaping of message text: `&`, `<` and `>` as entities, so a note `<!channel>` is
/// shown, not a ping of the whole channel, and `<url|text>` cannot fake a link.
fn slack_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_escapes_what_slack_reads_as_markup() {
        assert_eq!(
            slack_escaped("a <!channel> & <https://x|y>"),
            "a &lt;!channel&gt; &amp; &lt;https://x|y&gt;"
        );
    }
}
