//! HTTP for health checks and webhooks: a small Python server on loopback that answers as
//! told and records what it was sent, over TLS with a CA of the test's own; and a port no
//! one listens on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

/// A small HTTP server on loopback, for health checks, stopped when dropped.
pub struct HttpServer {
    child: std::process::Child,
    pub port: u16,
}

/// `python3 - MODE [DIR]`: `files` serves DIR (re-read at every request, so a `current` symlink
/// is followed), or the folder it was started in when DIR is absent (so it keeps serving the
/// release it started in, as an app server that resolved `current` once does); `500` answers
/// every request with an error; `hang` accepts connections and never answers; `record` keeps
/// each POST in DIR (`<n>.body`, and `<n>.meta` with its path and content type) and answers
/// 200. With `TLS_CERT` and `TLS_KEY` in its environment it speaks TLS.
const HTTP_SERVER: &str = r#"
import functools, http.server, os, socket, ssl, sys, time
mode = sys.argv[1]
if mode == "hang":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
    print(s.getsockname()[1], flush=True)
    time.sleep(600)
    sys.exit(0)
directory = sys.argv[2] if len(sys.argv) > 2 else None
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if mode == "500":
            self.send_response(500); self.end_headers(); self.wfile.write(b"boom"); return
        super().do_GET()
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if mode == "500":
            self.send_response(500); self.end_headers(); self.wfile.write(b"boom"); return
        n = len([f for f in os.listdir(directory) if f.endswith(".body")])
        with open(os.path.join(directory, f"{n}.meta"), "w") as meta:
            meta.write(f"{self.path}\n{self.headers.get('Content-Type')}\n")
        with open(os.path.join(directory, f"{n}.body"), "wb") as out:
            out.write(body)
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=directory))
if os.environ.get("TLS_CERT"):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A private CA made with the real `openssl` command, and a server certificate it signed for
/// 127.0.0.1 and localhost.
pub struct TestCa {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(args).current_dir(dir);
            run(&mut cmd, format!("openssl {}", args.join(" "))).success();
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ats-hook test CA",
        ]);
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        TestCa {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HttpServer {
    pub fn start(mode: &str, dir: Option<&Path>, cwd: &Path) -> HttpServer {
        Self::spawn(mode, dir, cwd, None)
    }

    /// The same server speaking TLS with `tls`'s certificate for 127.0.0.1 and localhost.
    pub fn start_tls(mode: &str, dir: Option<&Path>, cwd: &Path, tls: &TestCa) -> HttpServer {
        Self::spawn(mode, dir, cwd, Some(tls))
    }

    fn spawn(mode: &str, dir: Option<&Path>, cwd: &Path, tls: Option<&TestCa>) -> HttpServer {
        use std::io::{BufRead, BufReader};
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(HTTP_SERVER).arg(mode);
        if let Some(dir) = dir {
            cmd.arg(dir);
        }
        if let Some(tls) = tls {
            cmd.env("TLS_CERT", &tls.server_cert)
                .env("TLS_KEY", &tls.server_key);
        }
        let mut child = cmd
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the health-check tests (tests/run installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no port from the test server: {line:?}"));
        HttpServer { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}/{path}", self.port)
    }
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
