//! A real nginx in front of two slots (TESTBED.md's recipe), and clients that keep their
//! connections alive through it for a whole deploy, checking every answer.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// nginx, private to one test: its own config, pid and logs in `dir`, listening on `port`,
/// its upstream block including `upstream` (the file a handover rewrites). Stopped when
/// dropped.
pub struct Nginx {
    pub dir: PathBuf,
    pub port: u16,
    pub upstream: PathBuf,
    conf: PathBuf,
    /// Its master's pid when started here (and stopped when dropped), not by a systemd; read
    /// at the start, since its folder may be gone by the time it is dropped.
    master: Option<i32>,
}

impl Nginx {
    /// Starts it with `upstream` naming `first` (the address nothing may serve yet).
    pub fn start(dir: &Path, first: &str) -> Nginx {
        let mut nginx = Nginx::configure(dir, first);
        run(Command::new("nginx").args(nginx.args(&[])), "start nginx").success();
        let pidfile = nginx.dir.join("nginx.pid");
        wait_for("nginx's pidfile", Duration::from_secs(10), || {
            std::fs::read_to_string(&pidfile).is_ok_and(|t| t.trim().parse::<i32>().is_ok())
        });
        nginx.master = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        nginx
    }

    /// `nginx.service` for a systemd to run this nginx (it stops with that systemd).
    pub fn unit(&self) -> String {
        let args = self.args(&[]).join(" ");
        format!(
            "[Unit]\nDefaultDependencies=no\n[Service]\nType=forking\nPIDFile={}\n\
             ExecStart=/usr/sbin/nginx {args}\nExecReload=/usr/sbin/nginx {args} -s reload\n",
            self.dir.join("nginx.pid").display()
        )
    }

    /// Its config, not started.
    pub fn configure(dir: &Path, first: &str) -> Nginx {
        assert!(
            Path::new("/usr/sbin/nginx").exists(),
            "nginx is not installed (tests/run installs nginx-light)"
        );
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        let port = closed_port();
        let upstream = dir.join("conf.d/app.upstream");
        std::fs::write(&upstream, format!("server {first};\n")).unwrap();
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon on;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nworker_processes 2;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n  access_log {d}/logs/access.log;\n\
                 client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                 upstream app {{ include {up}; }}\n\
                 server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; proxy_read_timeout 60s; }} }}\n}}\n",
                up = upstream.display()
            ),
        )
        .unwrap();
        Nginx {
            dir,
            port,
            upstream,
            conf,
            master: None,
        }
    }

    fn args(&self, more: &[&str]) -> Vec<String> {
        let mut args = vec![
            "-c".to_string(),
            self.conf.display().to_string(),
            "-e".to_string(),
            self.dir.join("logs/error.log").display().to_string(),
        ];
        args.extend(more.iter().map(|s| s.to_string()));
        args
    }

    /// The commands `serve.proxy` names to validate and reload this nginx.
    pub fn test_command(&self) -> String {
        format!("/usr/sbin/nginx -t -q {}", self.args(&[]).join(" "))
    }

    pub fn reload_command(&self) -> String {
        format!("nginx {} -s reload", self.args(&[]).join(" "))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The address the upstream file names now.
    pub fn points_at(&self) -> String {
        let text = std::fs::read_to_string(&self.upstream).unwrap();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server "))
            .unwrap_or_default()
            .trim_end_matches(';')
            .to_string()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Run by a systemd of its own namespace, it stops with that systemd.
        let Some(pid) = self.master else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGQUIT,
        );
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Clients that each keep one connection alive and send GETs one after the other (5 ms apart,
/// a busy site's pace without starving the machine), as browsers and API clients do, until
/// stopped (bounded in time whatever the deploy does).
pub struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Seen>>,
}

/// What one client saw, in order.
#[derive(Default, Debug)]
pub struct Seen {
    /// Each answer's body (trimmed), for a 200.
    pub bodies: Vec<String>,
    /// Each failed request: a connection error, a non-200 status, a cut answer.
    pub failures: Vec<String>,
    /// Requests sent again on a new connection because the kept one was closed before any
    /// byte of the answer: what every HTTP client does for a GET (RFC 9112, 9.3.1).
    pub retried: usize,
    /// Connections opened.
    pub connections: usize,
}

impl Clients {
    pub fn start(port: u16, path: &str, count: usize) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let path = path.to_string();
                std::thread::spawn(move || client(port, &path, &stop))
            })
            .collect();
        Clients { stop, threads }
    }

    pub fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

fn client(port: u16, path: &str, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let started = Instant::now();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(5));
        let reused = conn.is_some();
        if conn.is_none() {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    seen.connections += 1;
                    conn = Some(BufReader::new(stream));
                }
                Err(err) => {
                    seen.failures.push(format!("connect: {err}"));
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        match request(conn.as_mut().unwrap(), path) {
            Ok((status, body, keep)) => {
                if status == 200 {
                    seen.bodies.push(body.trim().to_string());
                } else {
                    seen.failures
                        .push(format!("HTTP {status}: {}", body.trim()));
                }
                if !keep {
                    conn = None;
                }
            }
            Err(Cut::BeforeAnswer(_)) if reused => {
                // The kept connection was closed while idle: send it again on a new one.
                seen.retried += 1;
                conn = None;
            }
            Err(Cut::BeforeAnswer(err)) | Err(Cut::During(err)) => {
                seen.failures.push(err);
                conn = None;
            }
        }
    }
    seen
}

enum Cut {
    /// Not a byte of the answer came.
    BeforeAnswer(String),
    During(String),
}

/// One GET on a kept connection: status, body, whether the connection stays open.
fn request(conn: &mut BufReader<TcpStream>, path: &str) -> Result<(u16, String, bool), Cut> {
    conn.get_mut()
        .write_all(format!("GET /{path} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
        .map_err(|e| Cut::BeforeAnswer(format!("send: {e}")))?;
    let mut line = String::new();
    match conn.read_line(&mut line) {
        Ok(0) => return Err(Cut::BeforeAnswer("closed before the answer".into())),
        Ok(_) => {}
        Err(e) => return Err(Cut::BeforeAnswer(format!("read: {e}"))),
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Cut::During(format!("not a status line: {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = true;
    loop {
        let mut header = String::new();
        conn.read_line(&mut header)
            .map_err(|e| Cut::During(format!("headers: {e}")))?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => keep = !value.contains("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size)
                .map_err(|e| Cut::During(format!("chunk: {e}")))?;
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| Cut::During(format!("bad chunk size {size:?}")))?;
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk)
                .map_err(|e| Cut::During(format!("chunk: {e}")))?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        conn.read_exact(&mut body)
            .map_err(|e| Cut::During(format!("body: {e}")))?;
    } else {
        conn.read_to_end(&mut body)
            .map_err(|e| Cut::During(format!("body: {e}")))?;
        keep = false;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned(), keep))
}

/// Each client's served bodies, in order, without repeats: `[old, new]` when the served commit
/// changed once.
pub fn changes(seen: &Seen) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for body in &seen.bodies {
        if out.last() != Some(body) {
            out.push(body.clone());
        }
    }
    out
}

/// Caddy, private to one test, from a JSON config: its admin API on a port of its own, one
/// server on `port` whose `reverse_proxy` handler has the `@id` `app`. Stopped when dropped.
pub struct Caddy {
    child: std::process::Child,
    pub port: u16,
    pub admin: String,
}

impl Caddy {
    pub fn start(dir: &Path, first: &str) -> Caddy {
        assert!(
            Path::new("/usr/bin/caddy").exists(),
            "caddy is not installed (tests/run installs it)"
        );
        let dir = dir.join("caddy");
        std::fs::create_dir_all(&dir).unwrap();
        let (port, admin_port) = (closed_port(), closed_port());
        let config = serde_json::json!({
            "admin": { "listen": format!("127.0.0.1:{admin_port}") },
            "apps": { "http": { "servers": { "site": {
                "listen": [format!("127.0.0.1:{port}")],
                "automatic_https": { "disable": true },
                "routes": [{ "handle": [{
                    "@id": "app",
                    "handler": "reverse_proxy",
                    "upstreams": [{ "dial": first }]
                }]}]
            }}}}
        });
        let file = dir.join("caddy.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("caddy.log")).unwrap();
        let child = Command::new("caddy")
            .args(["run", "--config"])
            .arg(&file)
            .env("HOME", &dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let caddy = Caddy {
            child,
            port,
            admin: format!("http://127.0.0.1:{admin_port}/id/app"),
        };
        wait_for("Caddy's admin API", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_ok()
        });
        caddy
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
