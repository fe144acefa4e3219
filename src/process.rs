//! Every child process ats-hook runs goes through here.
//!
//! A child runs in a process group of its own, with git's `GIT_*` variables removed from its
//! environment and stdin from `/dev/null`. Its stdout and stderr are merged and handed over line
//! by line as they come. On a timeout, or when ats-hook itself is asked to stop (SIGTERM,
//! SIGINT, SIGHUP), the whole group is sent SIGTERM and, after a grace period, SIGKILL, so a
//! step that started background children leaves nothing running.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a group gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);
/// How long to keep reading after the child exited, for output still in the pipe. A background
/// process that holds the pipe open longer is not waited for.
const DRAIN: Duration = Duration::from_secs(1);
/// How many of the last output lines an error quotes.
const TAIL: usize = 20;

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

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

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut(Duration),
    Interrupted,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The status a shell would report: the code, or 128+N for signal N.
    pub fn shell_code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            Exit::Signal(signal) => Some(128 + signal),
            Exit::TimedOut(_) | Exit::Interrupted => None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit {code}"),
            Exit::Signal(signal) => {
                let name = Signal::try_from(*signal).map(|s| s.as_str()).unwrap_or("?");
                write!(f, "killed by {name}, exit {}", 128 + signal)
            }
            Exit::TimedOut(limit) => {
                write!(f, "timed out after {}", humantime::format_duration(*limit))
            }
            Exit::Interrupted => f.write_str("interrupted"),
        }
    }
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
        }
    }

    /// `sh -c <script>`: for commands the config names, never for values that came with a push.
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

    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = Some(timeout);
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
        let mut expr = duct::cmd(&self.program, &self.args)
            .full_env(&self.env)
            .stdin_null()
            .stderr_to_stdout()
            .unchecked()
            .before_spawn(|command| {
                command.process_group(0);
                Ok(())
            });
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        expr
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

        let (lines, incoming) = mpsc::channel::<Vec<u8>>();
        let reader = Arc::clone(&handle);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(&*reader);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if lines.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });

        let mut tail: std::collections::VecDeque<String> =
            std::collections::VecDeque::with_capacity(TAIL);
        let mut stopping: Option<(Exit, Instant)> = None;
        let mut exited_at: Option<Instant> = None;
        let mut checked = Instant::now();
        loop {
            match incoming.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']);
                    on_line(text);
                    if tail.len() == TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(text.to_string());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            // A chatty child must not keep the timeout and the stop flag from being looked at.
            if checked.elapsed() < Duration::from_millis(50) {
                continue;
            }
            checked = Instant::now();
            let status = handle
                .try_wait()
                .with_context(|| format!("failed to wait for `{}`", self.display()))?;
            if status.is_some() {
                let at = *exited_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= DRAIN {
                    tracing::debug!(command = %self.display(), "not waiting for background processes that hold its output");
                    break;
                }
                continue;
            }
            match stopping {
                None => {
                    let why = if stop_requested() {
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

fn signal_group(pgid: Option<Pid>, signal: Signal) {
    if let Some(pgid) = pgid {
        // ESRCH: the group is already gone, which is what we want.
        let _ = killpg(pgid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_lines_and_reports_exit() {
        let mut seen = Vec::new();
        let finished = Cmd::shell("echo one; echo two >&2; exit 3")
            .stream(&mut |line| seen.push(line.to_string()))
            .unwrap();
        assert_eq!(seen, ["one", "two"]);
        assert_eq!(finished.exit, Exit::Code(3));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let script = format!("sleep 60 & echo $! > {}; sleep 60", pidfile.display());
        let finished = Cmd::shell(&script)
            .timeout(Duration::from_millis(300))
            .stream(&mut |_| {})
            .unwrap();
        assert!(matches!(finished.exit, Exit::TimedOut(_)));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep is gone (or a zombie waiting for its reaper).
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.split(' ').nth(2).is_some_and(|s| s == "Z"))
            .unwrap_or(false);
        assert!(!alive, "background child {pid} survived the timeout");
    }

    #[test]
    fn git_variables_are_not_inherited() {
        std::env::set_var("GIT_DIR_FOR_TEST_ONLY", "x");
        let out = Cmd::shell("env").read().unwrap();
        assert!(!out.contains("GIT_DIR_FOR_TEST_ONLY"));
    }

    #[test]
    fn signal_exit_is_128_plus_n() {
        let finished = Cmd::shell("kill -9 $$").stream(&mut |_| {}).unwrap();
        assert_eq!(finished.exit, Exit::Signal(9));
        assert_eq!(finished.exit.shell_code(), Some(137));
    }
}
