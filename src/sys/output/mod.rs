//! What the pusher reads, what the deploy log keeps, what journald records.
//!
//! Everything goes through `tracing`. Three layers listen:
//! - stderr, which git shows the pusher as `remote:` lines: a plain format, `ats-hook: message`
//!   for our own lines and `<step> | line` for a step's output, level set by `-v`/`ATS_HOOK_LOG`;
//! - the deploy's log file `<root>/.ats-hook/logs/<id>.log`, the same text, while a deploy runs;
//! - journald, when its socket exists, with the deploy id, commit, ref and step as fields
//!   (`journalctl -t ats-hook DEPLOY_ID=...`).
//!
//! The deploy's identity is held here while it runs, so that every line carries it without
//! each caller repeating it.
//!
//! A step's output is bounded on both sides (`StepLines`): the pusher sees the first lines of
//! each step as they come and, of a longer output, a count of what was not shown and the last
//! lines, which is where the error is; the log keeps everything up to `deploy.log_limit` and
//! says what it cut. journald gets what the pusher sees.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

mod format;

pub use format::{count, iec_size, prefix, printable, rfc3339, seconds, short, short_hash, size};

/// The target of a step's output lines; printed without our prefix.
const STEP_TARGET: &str = "ats_hook::step";
/// Step lines for the log only: past what the pusher is shown.
const LOG_ONLY: &str = "ats_hook::step::log_only";
/// Step lines for the pusher only: the last lines of a long output, already in the log.
const PUSHER_ONLY: &str = "ats_hook::step::pusher_only";

/// How much of one step's output the pusher sees as it comes: lines, and bytes.
pub const PUSHER_HEAD_LINES: usize = 2000;
pub const PUSHER_HEAD_BYTES: usize = 512 << 10;
/// How many of the last lines of a longer output the pusher sees when the step ends, at most
/// how many bytes.
pub const PUSHER_TAIL: usize = 100;
pub const PUSHER_TAIL_BYTES: usize = 64 << 10;

/// The step output the running deploy's log has taken, and what it may take.
static LOGGED: AtomicU64 = AtomicU64::new(0);
static LOG_LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

#[derive(Debug, Default)]
struct DeployContext {
    deploy_id: String,
    commit: String,
    git_ref: String,
    /// The app's name, with several apps to a push: each line the pusher reads starts with it.
    app: Option<String>,
}

/// Shared, so tagging a line costs a reference count, not three string copies: a chatty step
/// emits thousands of lines.
static CONTEXT: Mutex<Option<Arc<DeployContext>>> = Mutex::new(None);
static DEPLOY_LOG: Mutex<Option<File>> = Mutex::new(None);

/// Installs the subscriber. `verbose` raises stderr to debug (more `-v`, trace);
/// `ATS_HOOK_LOG` (EnvFilter syntax) overrides it.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "ats_hook=info",
        1 => "ats_hook=debug",
        _ => "trace",
    };
    let stderr_filter = EnvFilter::try_from_env("ATS_HOOK_LOG")
        .unwrap_or_else(|_| EnvFilter::new(default))
        .add_directive(
            format!("{LOG_ONLY}=off")
                .parse()
                .expect("a valid directive"),
        );
    let ours = Targets::new().with_target("ats_hook", LevelFilter::INFO);
    let for_log = ours.clone().with_target(PUSHER_ONLY, LevelFilter::OFF);
    let for_journal = ours.with_target(LOG_ONLY, LevelFilter::OFF);
    // Colour only for a person at a terminal: a hook's stderr is a pipe to git.
    let color = io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .event_format(PlainFormat { color })
        .with_filter(stderr_filter);
    let log_file = tracing_subscriber::fmt::layer()
        .with_writer(DeployLogWriter)
        .event_format(PlainFormat { color: false })
        .with_filter(for_log);
    let journald = tracing_journald::layer().ok().map(|layer| {
        layer
            .with_syslog_identifier("ats-hook".to_string())
            .with_field_prefix(None)
            .with_filter(for_journal)
    });
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(log_file)
        .with(journald)
        .try_init();
}

/// Who a deploy is: its id, commit and ref, and its app when a push deploys several.
pub struct Deploying<'a> {
    pub id: &'a str,
    pub commit: &'a str,
    pub git_ref: &'a str,
    pub app: Option<&'a str>,
}

/// While the returned guard lives (and is not paused), every line carries this deploy's
/// identity and is appended to `log`, which takes up to `log_limit` bytes of step output.
pub fn begin_deploy(who: Deploying<'_>, log: Option<File>, log_limit: u64) -> DeployGuard {
    LOGGED.store(0, Ordering::SeqCst);
    LOG_LIMIT.store(log_limit, Ordering::SeqCst);
    *CONTEXT.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(DeployContext {
        deploy_id: who.id.to_string(),
        commit: who.commit.to_string(),
        git_ref: who.git_ref.to_string(),
        app: who.app.map(str::to_string),
    }));
    *DEPLOY_LOG.lock().unwrap_or_else(|e| e.into_inner()) = log;
    DeployGuard(None)
}

/// Until the returned guard goes, lines name `app` (when no deploy speaks yet): what a run
/// says before its deploy has an id (waiting for the lock, recovering a dead run).
pub fn speaking_for(app: Option<&str>) -> AppGuard {
    let mut context = CONTEXT.lock().unwrap_or_else(|e| e.into_inner());
    let set = match app {
        Some(app) if context.is_none() => {
            *context = Some(Arc::new(DeployContext {
                app: Some(app.to_string()),
                ..DeployContext::default()
            }));
            true
        }
        _ => false,
    };
    AppGuard(set)
}

/// See `speaking_for`.
pub struct AppGuard(bool);

impl Drop for AppGuard {
    fn drop(&mut self) {
        let mut context = CONTEXT.lock().unwrap_or_else(|e| e.into_inner());
        // Only the context it set: a deploy that began since keeps its own.
        if self.0 && context.as_ref().is_some_and(|c| c.deploy_id.is_empty()) {
            *context = None;
        }
    }
}

/// A running deploy's voice; paused, it holds what it puts back on `resume`.
pub struct DeployGuard(Option<Paused>);

struct Paused {
    context: Option<Arc<DeployContext>>,
    log: Option<File>,
    logged: u64,
    limit: u64,
}

impl DeployGuard {
    /// Lets another deploy of the same push speak (several apps take turns).
    pub fn pause(&mut self) {
        if self.0.is_none() {
            self.0 = Some(Paused {
                context: CONTEXT.lock().unwrap_or_else(|e| e.into_inner()).take(),
                log: DEPLOY_LOG.lock().unwrap_or_else(|e| e.into_inner()).take(),
                logged: LOGGED.swap(0, Ordering::SeqCst),
                limit: LOG_LIMIT.swap(u64::MAX, Ordering::SeqCst),
            });
        }
    }

    /// Speaks again for this deploy.
    pub fn resume(&mut self) {
        if let Some(paused) = self.0.take() {
            *CONTEXT.lock().unwrap_or_else(|e| e.into_inner()) = paused.context;
            *DEPLOY_LOG.lock().unwrap_or_else(|e| e.into_inner()) = paused.log;
            LOGGED.store(paused.logged, Ordering::SeqCst);
            LOG_LIMIT.store(paused.limit, Ordering::SeqCst);
        }
    }
}

impl Drop for DeployGuard {
    fn drop(&mut self) {
        // Paused, another deploy speaks now: what is paused goes with this guard.
        if self.0.is_some() {
            return;
        }
        *CONTEXT.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *DEPLOY_LOG.lock().unwrap_or_else(|e| e.into_inner()) = None;
        LOG_LIMIT.store(u64::MAX, Ordering::SeqCst);
    }
}

fn context() -> Option<Arc<DeployContext>> {
    CONTEXT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

macro_rules! emit {
    ($level:expr, $($field:tt)*) => {
        match context() {
            Some(c) => tracing::event!(
                target: "ats_hook", $level,
                deploy_id = %c.deploy_id, commit = %c.commit, git_ref = %c.git_ref, $($field)*
            ),
            None => tracing::event!(target: "ats_hook", $level, $($field)*),
        }
    };
}

/// One line of our own for the pusher: `ats-hook: <text>`.
pub fn say(text: impl fmt::Display) {
    emit!(Level::INFO, "{text}");
}

/// A line the pusher should notice: `ats-hook: warning: <text>`.
pub fn warn(text: impl fmt::Display) {
    emit!(Level::WARN, "{text}");
}

/// A failure line: `ats-hook: error: <text>`.
pub fn error(text: impl fmt::Display) {
    emit!(Level::ERROR, "{text}");
}

/// One line of a step's output for the pusher, the log and journald alike, prefixed with the
/// step's name padded to `width`.
pub fn step_line(step: &str, width: usize, line: &str) {
    step_event(Route::Everywhere, step, width, line);
}

#[derive(Clone, Copy)]
enum Route {
    Everywhere,
    LogOnly,
    PusherOnly,
}

fn step_event(route: Route, step: &str, width: usize, line: &str) {
    macro_rules! event_to {
        ($target:expr) => {
            match context() {
                Some(c) => tracing::info!(
                    target: $target,
                    deploy_id = %c.deploy_id, commit = %c.commit, git_ref = %c.git_ref, step,
                    "{step:>width$} | {line}"
                ),
                None => tracing::info!(target: $target, step, "{step:>width$} | {line}"),
            }
        };
    }
    match route {
        Route::Everywhere => event_to!(STEP_TARGET),
        Route::LogOnly => event_to!(LOG_ONLY),
        Route::PusherOnly => event_to!(PUSHER_ONLY),
    }
}

/// One step's output, bounded for the pusher and for the log (see the module's header).
pub struct StepLines {
    step: String,
    width: usize,
    shown_lines: usize,
    shown_bytes: usize,
    /// The last lines past what was shown, for the end, and their size.
    held: VecDeque<String>,
    held_bytes: usize,
    not_shown: u64,
    not_logged: (u64, u64),
}

impl StepLines {
    pub fn new(step: &str, width: usize) -> StepLines {
        StepLines {
            step: step.to_string(),
            width,
            shown_lines: 0,
            shown_bytes: 0,
            held: VecDeque::new(),
            held_bytes: 0,
            not_shown: 0,
            not_logged: (0, 0),
        }
    }

    pub fn line(&mut self, line: &str) {
        // As the log writes it: `<step> | <line>\n`.
        let size = (self.width.max(self.step.len()) + 3 + line.len() + 1) as u64;
        let logged = LOGGED.fetch_add(size, Ordering::Relaxed) + size;
        let to_log = logged <= LOG_LIMIT.load(Ordering::Relaxed);
        if !to_log {
            self.not_logged.0 += 1;
            self.not_logged.1 += size;
        }
        let to_pusher =
            self.shown_lines < PUSHER_HEAD_LINES && self.shown_bytes < PUSHER_HEAD_BYTES;
        if to_pusher {
            self.shown_lines += 1;
            self.shown_bytes += line.len();
        } else {
            self.held_bytes += line.len();
            self.held.push_back(line.to_string());
            while self.held.len() > PUSHER_TAIL
                || (self.held_bytes > PUSHER_TAIL_BYTES && self.held.len() > 1)
            {
                let gone = self.held.pop_front().unwrap_or_default();
                self.held_bytes -= gone.len();
                self.not_shown += 1;
            }
        }
        let route = match (to_pusher, to_log) {
            (true, true) => Route::Everywhere,
            (true, false) => Route::PusherOnly,
            (false, true) => Route::LogOnly,
            (false, false) => return,
        };
        step_event(route, &self.step, self.width, line);
    }

    /// Shows what the pusher has not seen yet of the end, and says what was left out.
    pub fn finish(self) {
        if self.not_shown > 0 {
            let id = context().map(|c| c.deploy_id.clone()).unwrap_or_default();
            say(format!(
                "… {} of `{}` not shown here; the whole output: `ats-hook log {id}`",
                count(self.not_shown as usize, "line"),
                self.step
            ));
        }
        for line in &self.held {
            step_event(Route::PusherOnly, &self.step, self.width, line);
        }
        if self.not_logged.0 > 0 {
            warn(format!(
                "{} of `{}` ({}) not kept in the log: it keeps {} of output (`deploy.log_limit`)",
                count(self.not_logged.0 as usize, "line"),
                self.step,
                size(self.not_logged.1),
                iec_size(LOG_LIMIT.load(Ordering::Relaxed))
            ));
        }
    }
}

/// Formats an event as the pusher reads it: the message alone, behind `ats-hook:` and the
/// level when it is not plain information. Fields are for journald and `-v`.
struct PlainFormat {
    color: bool,
}

impl<S, N> FormatEvent<S, N> for PlainFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let app = context().and_then(|c| c.app.clone());
        if meta.target().starts_with(STEP_TARGET) {
            return match app {
                Some(app) => writeln!(writer, "{app}: {}", fields.message),
                None => writeln!(writer, "{}", fields.message),
            };
        }
        let level = *meta.level();
        let line = plain_line(level, &fields, meta.target(), self.color);
        match app {
            // `ats-hook: backend: error: …`
            Some(app) => writeln!(writer, "ats-hook: {app}: {}", &line["ats-hook: ".len()..]),
            None => writeln!(writer, "{line}"),
        }
    }
}

/// `ats-hook: [level: ]message`, with fields and target below INFO; coloured on request.
fn plain_line(level: Level, fields: &Fields, target: &str, color: bool) -> String {
    const RED: &str = "\x1b[31m";
    const YELLOW: &str = "\x1b[33m";
    const GREEN: &str = "\x1b[32m";
    const RESET: &str = "\x1b[0m";
    let (prefix, paint) = if level == Level::INFO {
        let summary = &fields.message;
        let paint = if summary.starts_with("deployed ") || summary.starts_with("rolled back to ") {
            GREEN
        } else if summary.contains(" FAILED") || summary.contains(" INTERRUPTED") {
            RED
        } else {
            ""
        };
        ("", paint)
    } else if level == Level::WARN {
        ("warning: ", YELLOW)
    } else if level == Level::ERROR {
        ("error: ", RED)
    } else {
        ("debug: ", "")
    };
    let mut line = if color && !paint.is_empty() {
        format!("ats-hook: {paint}{prefix}{}{RESET}", fields.message)
    } else {
        format!("ats-hook: {prefix}{}", fields.message)
    };
    if level > Level::INFO {
        line.push_str(&format!(" [{target}]{}", fields.rest));
    }
    line
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

/// Writes into the running deploy's log file, if any.
struct DeployLogWriter;

impl<'a> MakeWriter<'a> for DeployLogWriter {
    type Writer = DeployLogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        DeployLogWriter
    }
}

impl Write for DeployLogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(file) = DEPLOY_LOG
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            file.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether an error comes from a full disk (ENOSPC, or EDQUOT for a user over quota).
pub fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .is_some_and(|code| {
                code == nix::errno::Errno::ENOSPC as i32 || code == nix::errno::Errno::EDQUOT as i32
            })
    })
}

/// Says so when the filesystem holding `path` has (almost) no space left: what a failed step
/// that ran into a full disk does not say itself.
pub fn warn_if_disk_full(path: &std::path::Path) {
    let Ok(stats) = nix::sys::statvfs::statvfs(path) else {
        return;
    };
    let free = stats.blocks_available() * stats.fragment_size();
    if free < 1 << 20 {
        warn(format!(
            "the disk holding `{}` is full ({} free): free some space (`df -h` shows where), then push again",
            path.display(),
            size(free)
        ));
    }
}

/// The error, with what to do about it when a disk is full or ats-hook may not write where it
/// must.
pub fn with_disk_full_hint(err: anyhow::Error) -> anyhow::Error {
    let denied = err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::PermissionDenied)
    });
    if is_disk_full(&err) {
        err.context("a disk is full: free some space (`df -h` shows where), then push again")
    } else if denied {
        err.context(
            "permission denied: the deploy user must own the deploy root (`chown -R <deploy user>: <root>`), and commands be run as that user",
        )
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: Level, message: &str, color: bool) -> String {
        let fields = Fields {
            message: message.to_string(),
            rest: String::new(),
        };
        plain_line(level, &fields, "ats_hook", color)
    }

    #[test]
    fn plain_lines_have_no_colour_unless_asked() {
        assert_eq!(line(Level::ERROR, "boom", false), "ats-hook: error: boom");
        assert_eq!(
            line(Level::INFO, "deployed 723cd4e (main)", false),
            "ats-hook: deployed 723cd4e (main)"
        );
        assert_eq!(
            line(Level::ERROR, "boom", true),
            "ats-hook: \x1b[31merror: boom\x1b[0m"
        );
        assert_eq!(
            line(Level::INFO, "deployed x", true),
            "ats-hook: \x1b[32mdeployed x\x1b[0m"
        );
        assert_eq!(
            line(Level::INFO, "checked out 2 files", true),
            "ats-hook: checked out 2 files"
        );
    }

    #[test]
    fn errors_of_a_full_disk_or_a_denied_write_say_what_to_do() {
        let full = anyhow::Error::new(io::Error::from_raw_os_error(
            nix::errno::Errno::ENOSPC as i32,
        ))
        .context("failed to write `x`");
        let text = format!("{:#}", with_disk_full_hint(full));
        assert!(
            text.starts_with("a disk is full: free some space"),
            "{text}"
        );
        let denied = anyhow::Error::new(io::Error::from(io::ErrorKind::PermissionDenied))
            .context("failed to create `/srv/app/.ats-hook/logs`");
        let text = format!("{:#}", with_disk_full_hint(denied));
        assert!(
            text.contains("the deploy user must own the deploy root"),
            "{text}"
        );
        assert!(
            text.contains("failed to create `/srv/app/.ats-hook/logs`"),
            "{text}"
        );
        let other = anyhow::anyhow!("something else");
        assert_eq!(
            format!("{:#}", with_disk_full_hint(other)),
            "something else"
        );
    }
}
