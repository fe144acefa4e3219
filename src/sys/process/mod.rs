//! Every child process ats-hook runs goes through here.
//!
//! A child runs in a process group of its own, with git's `GIT_*` variables removed from its
//! environment and stdin from `/dev/null`. Its stdout and stderr are merged and handed over line
//! by line as they come. On a timeout, or when ats-hook itself is asked to stop (SIGTERM,
//! SIGINT, SIGHUP), the whole group is sent SIGTERM and, after a grace period, SIGKILL, so a
//! step that started background children leaves nothing running.
//!
//! Children die with ats-hook: a hook that is SIGKILLed (out of memory, a pusher's `kill -9`, a
//! power cut of its session) cannot stop them itself, so the binary ties each child's group to
//! its own life through a watcher, a second ats-hook process started once (`watch-groups`): the
//! hook tells it each group as it starts and ends, over a pipe only the hook holds. When that
//! pipe closes with a group still running, the hook is gone, and the watcher stops the group
//! as a timeout would. Servers meant to outlive the hook are started detached and never told.
//!
//! Output costs bounded memory whatever a child prints: lines travel from the reading thread
//! through a bounded queue, so a child that prints faster than the pusher's connection takes
//! it is slowed down by its full pipe instead of filling our memory, and a line longer than
//! `MAX_LINE` is handed over in pieces. Nothing a child printed before it exited is dropped:
//! after the exit, reading goes on to the end of the pipe, and stops early only for a
//! background process that keeps the pipe open (silent for `DRAIN`, or still writing after
//! more than a pipe's worth).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

mod exit;
mod watch;

pub use exit::Exit;

use watch::{tell_watcher, Watched};
pub use watch::{tie_children_to_this_process, watch_groups};

/// How long a group gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);
/// After the child exited: how long the pipe may stay silent before a background process that
/// holds it open is no longer waited for.
const DRAIN: Duration = Duration::from_secs(1);
/// After the child exited: how much more may be read from the pipe before what still comes is
/// taken for a background process writing (what the child wrote fits in the pipe's buffer).
const AFTER_EXIT: u64 = 1 << 20;
/// The longest piece of a line handed over at once; a longer line comes in pieces.
pub const MAX_LINE: usize = 16 << 10;
/// Pieces in flight between the reading thread and the caller.
const IN_FLIGHT: usize = 256;
/// How many of the last output lines an error quotes.
const TAIL: usize = 20;

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Where the process group of the running child is written while it runs, if anywhere: should
/// ats-hook die, the next run finds the group there and stops what is left of it.
static GROUP_FILE: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Names the file that records the running child's process group (see `GROUP_FILE`).
pub fn record_groups_in(path: Option<PathBuf>) {
    *GROUP_FILE.lock().unwrap_or_else(|e| e.into_inner()) = path;
}

/// Writes the running child's group in the group file, `0` when none runs. The file is
/// rewritten in place at a fixed width, so that noting a group never needs new space on a disk
/// that may be full.
fn note_group(pgid: Option<Pid>) {
    let file = GROUP_FILE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(file) = file else { return };
    let group = pgid.map_or(0, Pid::as_raw);
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{group:>11}\n").as_bytes()));
}

/// Makes SIGTERM, SIGINT and SIGHUP set a flag instead of killing ats-hook, so a deploy can stop
/// its running step and record itself as interrupted. A second signal kills at once.
pub fn install_signal_handlers() -> Result<()> {
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(flag))
            .context("failed to install a signal handler")?;
        signal_hook::flag::register(signal, Arc::clone(flag))
            .context("failed to install a signal handler")?;
    }
    Ok(())
}

/// Whether ats-hook was asked to stop.
pub fn stop_requested() -> bool {
    STOP.get().is_some_and(|flag| flag.load(Ordering::SeqCst))
}

#[derive(Debug)]
pub struct Finished {
    pub exit: Exit,
    pub duration: Duration,
    /// The last lines of output, for error messages.
    pub tail: Vec<String>,
}

/// A child process to run.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    env: BTreeMap<OsString, OsString>,
    timeout: Option<Duration>,
    /// Runs to its end (or its timeout) even when ats-hook is asked to stop.
    uninterruptible: bool,
    /// What the child reads on stdin; nothing when unset.
    stdin: Option<Vec<u8>>,
    /// The name the child is told it runs as (`argv[0]`), when not the program's path.
    arg0: Option<OsString>,
}

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Cmd {
        let env = std::env::vars_os()
            .filter(|(key, _)| !key.to_string_lossy().starts_with("GIT_"))
            .collect();
        Cmd {
            program: program.into(),
            args: Vec::new(),
            dir: None,
            env,
            timeout: None,
            uninterruptible: false,
            stdin: None,
            arg0: None,
        }
    }

    /// This binary itself, told it runs as `ats-hook`: a hook copied in place is named
    /// `post-receive`, and would read the command as a hook's.
    pub fn ats_hook() -> Result<Cmd> {
        let exe = std::env::current_exe().context("failed to find the ats-hook binary")?;
        let mut cmd = Cmd::new(exe);
        cmd.arg0 = Some("ats-hook".into());
        Ok(cmd)
    }

    /// `sh -c <script>`: for commands the config names, never for values that came with a push.
    /// `systemctl ARGS`, through `sudo -n` when `sudo` (the rule `install` prints allows
    /// exactly those commands).
    pub fn systemctl<I: IntoIterator<Item = S>, S: Into<OsString>>(sudo: bool, args: I) -> Cmd {
        let cmd = if sudo {
            Cmd::new("sudo").args(["-n", "systemctl"])
        } else {
            Cmd::new("systemctl")
        };
        cmd.args(args)
    }

    pub fn shell(script: &str) -> Cmd {
        Cmd::new("sh").arg("-c").arg(script)
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Cmd {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Cmd {
        self.dir = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Cmd {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Cmd
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        for (key, value) in vars {
            self.env.insert(key.into(), value.into());
        }
        self
    }

    /// Keeps only the variables of the environment whose names `keep` accepts.
    pub fn keep_env(mut self, keep: impl Fn(&str) -> bool) -> Cmd {
        self.env.retain(|key, _| key.to_str().is_some_and(&keep));
        self
    }

    /// Feeds `bytes` to the child's stdin.
    pub fn stdin_bytes(mut self, bytes: Vec<u8>) -> Cmd {
        self.stdin = Some(bytes);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = Some(timeout);
        self
    }

    /// Lets the command finish even when ats-hook is asked to stop: what puts the previous
    /// release back must not be cut short by the stop that caused it.
    pub fn uninterruptible(mut self) -> Cmd {
        self.uninterruptible = true;
        self
    }

    fn display(&self) -> String {
        let mut text = self.program.to_string_lossy().into_owned();
        for arg in &self.args {
            text.push(' ');
            text.push_str(&arg.to_string_lossy());
        }
        text
    }

    fn expression(&self) -> duct::Expression {
        let arg0 = self.arg0.clone();
        let mut expr = duct::cmd(&self.program, &self.args)
            .full_env(&self.env)
            .stderr_to_stdout()
            .unchecked()
            .before_spawn(move |command| {
                command.process_group(0);
                if let Some(arg0) = &arg0 {
                    command.arg0(arg0);
                }
                Ok(())
            });
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        // One stdin redirection only: duct keeps the first one applied.
        expr = match &self.stdin {
            Some(bytes) => expr.stdin_bytes(bytes.clone()),
            None => expr.stdin_null(),
        };
        expr
    }

    /// Starts the command on its own, in a process group of its own, with no input or output,
    /// and does not wait for it: it outlives ats-hook. Returns its pid.
    pub fn spawn_detached(&self) -> Result<u32> {
        self.spawn_detached_to(None)
    }

    /// Like `spawn_detached`, with its output (stdout and stderr) appended to `log`: a server
    /// that outlives ats-hook must not hold the pusher's pipes, or `git push` would wait for it.
    pub fn spawn_detached_to(&self, log: Option<std::fs::File>) -> Result<u32> {
        self.spawn_detached_with(log, None)
    }

    /// Like `spawn_detached`, its stdin the open file `stdin`: how a lock the caller holds is
    /// handed to the child (a `flock` belongs to the open file, which the child then shares).
    pub fn spawn_detached_holding(&self, stdin: std::fs::File) -> Result<u32> {
        self.spawn_detached_with(None, Some(stdin))
    }

    fn spawn_detached_with(
        &self,
        log: Option<std::fs::File>,
        stdin: Option<std::fs::File>,
    ) -> Result<u32> {
        use std::os::unix::process::CommandExt;
        use std::process::Stdio;
        let (stdout, stderr) = match log {
            Some(log) => {
                let copy = log.try_clone().context("failed to share the log file")?;
                (Stdio::from(log), Stdio::from(copy))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut command = std::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        if let Some(arg0) = &self.arg0 {
            command.arg0(arg0);
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let child = command
            .spawn()
            .with_context(|| format!("failed to start `{}`", self.display()))?;
        Ok(child.id())
    }

    /// Runs the command, handing each output line to `on_line` as it arrives.
    pub fn stream(&self, on_line: &mut dyn FnMut(&str)) -> Result<Finished> {
        tracing::debug!(command = %self.display(), dir = ?self.dir, "spawning");
        let started = Instant::now();
        let handle = Arc::new(
            self.expression()
                .reader()
                .with_context(|| format!("failed to start `{}`", self.display()))?,
        );
        let pgid = handle.pids().first().map(|&pid| Pid::from_raw(pid as i32));
        note_group(pgid);
        if let Some(pgid) = pgid {
            tell_watcher(pgid, true);
        }
        let _watched = Watched(pgid);

        let (lines, incoming) = mpsc::sync_channel::<Piece>(IN_FLIGHT);
        let read = Arc::new(AtomicU64::new(0));
        let reader = Arc::clone(&handle);
        let counter = Arc::clone(&read);
        std::thread::spawn(move || read_pieces(&reader, &counter, &lines));

        let mut tail: std::collections::VecDeque<String> =
            std::collections::VecDeque::with_capacity(TAIL);
        let mut stopping: Option<(Exit, Instant)> = None;
        // When the child exited, and how much had been read by then.
        let mut exited: Option<(Instant, u64)> = None;
        let mut last_piece = Instant::now();
        let mut checked = Instant::now();
        loop {
            match incoming.recv_timeout(Duration::from_millis(50)) {
                Ok(piece) => {
                    last_piece = Instant::now();
                    let text = String::from_utf8_lossy(&piece.bytes);
                    let text = text.trim_end_matches(['\n', '\r']);
                    let text = if piece.continues {
                        format!("{text} …")
                    } else {
                        text.to_string()
                    };
                    on_line(&text);
                    if tail.len() == TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(text);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            // A chatty child must not keep the timeout and the stop flag from being looked at.
            if checked.elapsed() < Duration::from_millis(50) {
                continue;
            }
            checked = Instant::now();
            if let Some((_, read_at_exit)) = exited {
                let since = read.load(Ordering::Relaxed).saturating_sub(read_at_exit);
                if last_piece.elapsed() >= DRAIN || since > AFTER_EXIT {
                    tracing::debug!(command = %self.display(), "not waiting for background processes that hold its output");
                    break;
                }
                continue;
            }
            let status = handle
                .try_wait()
                .with_context(|| format!("failed to wait for `{}`", self.display()))?;
            if status.is_some() {
                exited = Some((Instant::now(), read.load(Ordering::Relaxed)));
                continue;
            }
            match stopping {
                None => {
                    let why = if stop_requested() && !self.uninterruptible {
                        Some(Exit::Interrupted)
                    } else {
                        self.timeout
                            .filter(|limit| started.elapsed() >= *limit)
                            .map(Exit::TimedOut)
                    };
                    if let Some(why) = why {
                        signal_group(pgid, Signal::SIGTERM);
                        stopping = Some((why, Instant::now()));
                    }
                }
                Some((_, since)) if since.elapsed() >= GRACE => {
                    signal_group(pgid, Signal::SIGKILL);
                    let _ = handle.kill();
                }
                Some(_) => {}
            }
        }
        let output = loop {
            if let Some(output) = handle
                .try_wait()
                .with_context(|| format!("failed to wait for `{}`", self.display()))?
            {
                break output.status;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        note_group(None);
        if let Some((why, _)) = stopping {
            // The group may still hold processes that ignored SIGTERM.
            signal_group(pgid, Signal::SIGKILL);
            return Ok(Finished {
                exit: why,
                duration: started.elapsed(),
                tail: tail.into(),
            });
        }
        let exit = match (output.code(), output.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => bail!("`{}` ended with an unknown status", self.display()),
        };
        Ok(Finished {
            exit,
            duration: started.elapsed(),
            tail: tail.into(),
        })
    }

    /// Runs the command and returns its output; fails naming the command, its exit status and
    /// the tail of its output when it does not succeed.
    pub fn read(&self) -> Result<String> {
        let mut output = String::new();
        let finished = self.stream(&mut |line| {
            output.push_str(line);
            output.push('\n');
        })?;
        if !finished.exit.success() {
            bail!(
                "`{}` failed ({}):\n{}",
                self.display(),
                finished.exit,
                finished.tail.join("\n")
            );
        }
        Ok(output)
    }
}

impl Cmd {
    /// Replaces ats-hook with the command, keeping stdin, stdout and stderr (the SSH gate hands
    /// the connection to git this way). Returns only on failure.
    pub fn exec(&self) -> anyhow::Error {
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.args).env_clear().envs(&self.env);
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        tracing::debug!(command = %self.display(), "exec");
        let err = command.exec();
        anyhow::Error::new(err).context(format!("failed to run `{}`", self.display()))
    }
}

/// A line of output, or a piece of a long one (`continues`: more of the line follows).
struct Piece {
    bytes: Vec<u8>,
    continues: bool,
}

/// Reads `from` until its end, handing over lines and pieces of long lines, counting the bytes
/// read. Blocks while `to` is full, which is what slows a child down to the pace of its reader.
fn read_pieces(from: &duct::ReaderHandle, read: &AtomicU64, to: &mpsc::SyncSender<Piece>) {
    let mut reader = BufReader::with_capacity(64 << 10, from);
    let mut line = Vec::new();
    loop {
        let (used, complete) = match reader.fill_buf() {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
            Ok([]) => break,
            Ok(buf) => {
                let room = MAX_LINE - line.len();
                match buf.iter().take(room).position(|&b| b == b'\n') {
                    Some(at) => {
                        line.extend_from_slice(&buf[..=at]);
                        (at + 1, true)
                    }
                    None => {
                        let used = buf.len().min(room);
                        line.extend_from_slice(&buf[..used]);
                        (used, false)
                    }
                }
            }
        };
        reader.consume(used);
        read.fetch_add(used as u64, Ordering::Relaxed);
        if complete || line.len() >= MAX_LINE {
            let piece = Piece {
                bytes: std::mem::take(&mut line),
                continues: !complete,
            };
            if to.send(piece).is_err() {
                return;
            }
        }
    }
    if !line.is_empty() {
        let _ = to.send(Piece {
            bytes: line,
            continues: false,
        });
    }
}

pub(crate) fn signal_group(pgid: Option<Pid>, signal: Signal) {
    if let Some(pgid) = pgid {
        // ESRCH: the group is already gone, which is what we want.
        let _ = killpg(pgid, signal);
    }
}

/// Replaces this process with `program` (the app server a unit starts through `ats-hook
/// exec`), with `vars` added to the environment. Returns only how it failed.
pub fn exec(
    program: &std::ffi::OsStr,
    args: &[OsString],
    vars: Vec<(String, String)>,
) -> anyhow::Error {
    let err = std::process::Command::new(program)
        .args(args)
        .envs(vars)
        .exec();
    anyhow::Error::new(err).context(format!("failed to run `{}`", program.to_string_lossy()))
}

#[cfg(test)]
mod tests;
