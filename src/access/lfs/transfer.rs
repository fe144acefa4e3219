//! The server side of git-lfs's SSH transfer protocol (`git-lfs-transfer PATH upload|download`,
//! protocol version 1): the capabilities, then commands until `quit`: `version`, `batch` (which
//! objects to send or fetch), `put-object` and `verify-object` (upload), `get-object`
//! (download). Every object is checked by size and SHA-256 before the store keeps it. No
//! locking is offered, so the client does not ask for it.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};

use super::pktline::{Packet, Reader, Writer};
use super::store::{valid_oid, Store};

/// What the connection was opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Upload,
    Download,
}

impl Operation {
    pub fn parse(text: &str) -> Option<Operation> {
        match text {
            "upload" => Some(Operation::Upload),
            "download" => Some(Operation::Download),
            _ => None,
        }
    }
}

/// A request's answer: a status, its arguments, and text lines after a delimiter.
struct Answer {
    code: u16,
    args: Vec<String>,
    lines: Option<Vec<String>>,
}

impl Answer {
    fn ok() -> Answer {
        Answer {
            code: 200,
            args: Vec::new(),
            lines: None,
        }
    }

    fn error(code: u16, message: impl Into<String>) -> Answer {
        Answer {
            code,
            args: Vec::new(),
            lines: Some(vec![message.into()]),
        }
    }

    fn send<W: Write>(self, out: &mut Writer<W>) -> Result<()> {
        out.text(&format!("status {:03}", self.code))?;
        for arg in &self.args {
            out.text(arg)?;
        }
        if let Some(lines) = &self.lines {
            out.delim()?;
            for line in lines {
                out.text(line)?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// Serves one connection: `input` is what the client sends, `output` what it reads.
pub fn serve(
    store: &Store,
    operation: Operation,
    input: impl Read,
    output: impl Write,
) -> Result<()> {
    let mut input = Reader::new(input);
    let mut out = Writer::new(output);
    out.text("version=1")?;
    out.flush()?;
    loop {
        let Some(packet) = input.packet()? else {
            // The client hung up between requests.
            return Ok(());
        };
        let Some(request) = packet.text() else {
            Answer::error(400, "a request must start with a command").send(&mut out)?;
            continue;
        };
        let (command, rest) = request.split_once(' ').unwrap_or((request.as_str(), ""));
        let answer = match (command, operation) {
            ("version", _) => {
                input.lines(false)?;
                if rest == "1" {
                    Answer::ok()
                } else {
                    Answer::error(
                        400,
                        format!("protocol version `{rest}` is not served: only 1"),
                    )
                }
            }
            ("batch", _) => batch(store, operation, &mut input)?,
            ("put-object", Operation::Upload) => put(store, rest, &mut input)?,
            ("verify-object", Operation::Upload) => verify(store, rest, &mut input)?,
            ("get-object", Operation::Download) => {
                input.lines(false)?;
                if let Some(done) = get(store, rest, &mut out)? {
                    done.send(&mut out)?;
                }
                continue;
            }
            ("quit", _) => {
                input.lines(false)?;
                Answer::ok().send(&mut out)?;
                return Ok(());
            }
            ("put-object" | "verify-object" | "get-object", _) => {
                skip_request(&mut input)?;
                Answer::error(
                    405,
                    format!("`{command}` is not allowed on a connection for {operation:?}")
                        .to_lowercase(),
                )
            }
            _ => {
                skip_request(&mut input)?;
                Answer::error(400, format!("unknown command `{}`", command.escape_debug()))
            }
        };
        answer.send(&mut out)?;
    }
}

/// Reads what is left of a request nobody serves, up to its flush.
fn skip_request<R: Read>(input: &mut Reader<R>) -> Result<()> {
    while input.expect()? != Packet::Flush {}
    Ok(())
}

/// `key=value` arguments.
fn arg<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn batch<R: Read>(store: &Store, operation: Operation, input: &mut Reader<R>) -> Result<Answer> {
    let (args, delim) = input.lines(true)?;
    let lines = if delim {
        input.lines(false)?.0
    } else {
        Vec::new()
    };
    if let Some(algo) = arg(&args, "hash-algo").filter(|a| *a != "sha256") {
        return Ok(Answer::error(
            409,
            format!("hash algorithm `{algo}` is not served: only sha256"),
        ));
    }
    let mut answer = Vec::with_capacity(lines.len());
    for line in &lines {
        let mut words = line.split(' ');
        let (Some(oid), Some(size)) = (words.next(), words.next()) else {
            return Ok(Answer::error(
                400,
                format!("malformed batch line `{}`", line.escape_debug()),
            ));
        };
        let Ok(size) = size.parse::<u64>() else {
            return Ok(Answer::error(
                400,
                format!("malformed size in batch line `{}`", line.escape_debug()),
            ));
        };
        if !valid_oid(oid) {
            return Ok(Answer::error(
                400,
                format!("`{}` is not a Git LFS object id", oid.escape_debug()),
            ));
        }
        let present = store.has(oid, size);
        let action = match (operation, present) {
            (Operation::Upload, false) => "upload",
            (Operation::Download, true) => "download",
            _ => "noop",
        };
        answer.push(format!("{oid} {size} {action}"));
    }
    Ok(Answer {
        code: 200,
        args: vec!["hash-algo=sha256".into()],
        lines: Some(answer),
    })
}

/// The data packets of a request, read as one stream up to its flush.
struct Body<'r, R: Read> {
    input: &'r mut Reader<R>,
    chunk: Vec<u8>,
    at: usize,
    done: bool,
}

impl<R: Read> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.input.expect().map_err(std::io::Error::other)? {
                Packet::Flush => self.done = true,
                Packet::Delim => {
                    return Err(std::io::Error::other("a delimiter inside an object's data"))
                }
                Packet::Data(data) => {
                    self.chunk = data;
                    self.at = 0;
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn put<R: Read>(store: &Store, oid: &str, input: &mut Reader<R>) -> Result<Answer> {
    let (args, delim) = input.lines(true)?;
    if !delim {
        return Ok(Answer::error(
            400,
            "`put-object` needs its data after a delimiter",
        ));
    }
    let mut body = Body {
        input,
        chunk: Vec::new(),
        at: 0,
        done: false,
    };
    let size = arg(&args, "size").and_then(|s| s.parse::<u64>().ok());
    let kept = match size {
        Some(size) => store.receive(oid, size, &mut body),
        None => Err(anyhow::anyhow!("`put-object` needs `size=<bytes>`")),
    };
    // Whatever was kept, the request is read to its end.
    std::io::copy(&mut body, &mut std::io::sink()).context("failed to read the object")?;
    Ok(match kept {
        Ok(()) => {
            tracing::info!(oid, size, "lfs: received object {oid}");
            Answer::ok()
        }
        Err(err) if crate::sys::output::is_disk_full(&err) => {
            tracing::error!("lfs: {err:#}");
            Answer::error(507, format!("{err:#}"))
        }
        Err(err) => {
            tracing::warn!("lfs: {err:#}");
            Answer::error(400, format!("{err:#}"))
        }
    })
}

fn verify<R: Read>(store: &Store, oid: &str, input: &mut Reader<R>) -> Result<Answer> {
    let (args, _) = input.lines(false)?;
    let Some(size) = arg(&args, "size").and_then(|s| s.parse::<u64>().ok()) else {
        return Ok(Answer::error(400, "`verify-object` needs `size=<bytes>`"));
    };
    Ok(if store.has(oid, size) {
        Answer::ok()
    } else {
        Answer::error(
            404,
            format!("object {oid} of {size} bytes is not on the server"),
        )
    })
}

/// Sends object `oid`; or the answer to send instead when it cannot.
fn get<W: Write>(store: &Store, oid: &str, out: &mut Writer<W>) -> Result<Option<Answer>> {
    let (mut file, size) = match store.open(oid) {
        Ok(found) => found,
        Err(err) => return Ok(Some(Answer::error(404, format!("{err:#}")))),
    };
    out.text("status 200")?;
    out.text(&format!("size={size}"))?;
    out.delim()?;
    let mut buf = vec![0u8; super::pktline::MAX_DATA];
    let mut sent = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("failed to read object {oid}"))?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        out.data(&buf[..n])?;
    }
    if sent != size {
        bail!("object {oid} changed while it was sent");
    }
    out.flush()?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A client's requests, written as git-lfs writes them.
    fn requests(build: impl FnOnce(&mut Writer<&mut Vec<u8>>)) -> Vec<u8> {
        let mut bytes = Vec::new();
        build(&mut Writer::new(&mut bytes));
        bytes
    }

    /// Every answer's packets, as text (`<flush>`, `<delim>`, or the line).
    fn answers(bytes: &[u8]) -> Vec<String> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        while let Some(p) = r.packet().unwrap() {
            out.push(match p {
                Packet::Flush => "<flush>".into(),
                Packet::Delim => "<delim>".into(),
                p => p.text().unwrap(),
            });
        }
        out
    }

    #[test]
    fn an_upload_sends_checks_and_keeps_an_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::of_repo(dir.path());
        let content = vec![42u8; 100_000];
        let oid = format!("{:x}", Sha256::digest(&content));
        let input = requests(|w| {
            w.text("version 1").unwrap();
            w.flush().unwrap();
            w.text("batch").unwrap();
            w.text("transfer=ssh").unwrap();
            w.text("hash-algo=sha256").unwrap();
            w.delim().unwrap();
            w.text(&format!("{oid} 100000")).unwrap();
            w.flush().unwrap();
            w.text(&format!("put-object {oid}")).unwrap();
            w.text("size=100000").unwrap();
            w.delim().unwrap();
            w.data(&content).unwrap();
            w.flush().unwrap();
            w.text(&format!("verify-object {oid}")).unwrap();
            w.text("size=100000").unwrap();
            w.flush().unwrap();
            w.text(&format!("get-object {oid}")).unwrap();
            w.flush().unwrap();
            w.text("quit").unwrap();
            w.flush().unwrap();
        });
        let mut output = Vec::new();
        serve(&store, Operation::Upload, &input[..], &mut output).unwrap();
        assert_eq!(
            answers(&output),
            [
                "version=1",
                "<flush>",
                "status 200",
                "<flush>",
                "status 200",
                "hash-algo=sha256",
                "<delim>",
                &format!("{oid} 100000 upload"),
                "<flush>",
                "status 200",
                "<flush>",
                "status 200",
                "<flush>",
                "status 405",
                "<delim>",
                "`get-object` is not allowed on a connection for upload",
                "<flush>",
                "status 200",
                "<flush>",
            ]
        );
        assert!(store.has(&oid, 100_000));

        // Fetched back on a download connection, whole.
        let input = requests(|w| {
            w.text(&format!("get-object {oid}")).unwrap();
            w.flush().unwrap();
            w.text(&format!("put-object {oid}")).unwrap();
            w.text("size=1").unwrap();
            w.delim().unwrap();
            w.data(b"x").unwrap();
            w.flush().unwrap();
        });
        let mut output = Vec::new();
        serve(&store, Operation::Download, &input[..], &mut output).unwrap();
        let mut r = Reader::new(&output[..]);
        let mut texts = Vec::new();
        let mut data = Vec::new();
        let mut in_data = false;
        while let Some(p) = r.packet().unwrap() {
            match p {
                Packet::Delim => {
                    in_data = texts
                        .last()
                        .is_some_and(|t: &String| t.starts_with("size="))
                }
                Packet::Flush => in_data = false,
                Packet::Data(d) if in_data => data.extend(d),
                p => texts.push(p.text().unwrap()),
            }
        }
        assert_eq!(data, content);
        assert_eq!(
            texts[..4],
            ["version=1", "status 200", "size=100000", "status 405"]
        );
    }

    #[test]
    fn a_wrong_object_or_request_is_refused_and_nothing_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::of_repo(dir.path());
        let oid = format!("{:x}", Sha256::digest(b"right"));
        let input = requests(|w| {
            w.text(&format!("put-object {oid}")).unwrap();
            w.text("size=5").unwrap();
            w.delim().unwrap();
            w.data(b"wrong").unwrap();
            w.flush().unwrap();
            w.text(&format!("verify-object {oid}")).unwrap();
            w.text("size=5").unwrap();
            w.flush().unwrap();
            w.text("batch").unwrap();
            w.text("hash-algo=sha512").unwrap();
            w.delim().unwrap();
            w.flush().unwrap();
            w.text("batch").unwrap();
            w.delim().unwrap();
            w.text("../../etc/passwd 5").unwrap();
            w.flush().unwrap();
            w.text("lock").unwrap();
            w.text("path=a").unwrap();
            w.flush().unwrap();
            w.text("version 2").unwrap();
            w.flush().unwrap();
        });
        let mut output = Vec::new();
        serve(&store, Operation::Upload, &input[..], &mut output).unwrap();
        let statuses: Vec<String> = answers(&output)
            .into_iter()
            .filter(|l| l.starts_with("status ") || l.contains(' '))
            .collect();
        assert_eq!(statuses[0], "status 400");
        assert!(statuses[1].contains("has the SHA-256"), "{statuses:?}");
        assert_eq!(statuses[2], "status 404");
        assert_eq!(statuses[4], "status 409");
        assert_eq!(statuses[6], "status 400");
        assert!(statuses[7].contains("is not a Git LFS object id"));
        assert_eq!(statuses[8], "status 400");
        assert!(statuses[9].contains("unknown command `lock`"));
        assert_eq!(statuses[10], "status 400");
        assert!(!store.has(&oid, 5));
        // A stream cut inside an object's data is an error, and keeps nothing.
        let cut = requests(|w| {
            w.text(&format!("put-object {oid}")).unwrap();
            w.text("size=5").unwrap();
            w.delim().unwrap();
            w.data(b"ri").unwrap();
        });
        assert!(serve(&store, Operation::Upload, &cut[..], &mut Vec::new()).is_err());
        assert!(!store.has(&oid, 5));
    }
}
