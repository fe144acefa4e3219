//! git's pkt-line framing, as git-lfs's SSH protocol uses it: four hex digits of length (the
//! four included), then the data; `0000` ends a message (flush), `0001` separates its parts
//! (delim).

use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};

/// The most data one packet carries.
pub const MAX_DATA: usize = 65516;

/// One packet as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    Flush,
    Delim,
    Data(Vec<u8>),
}

impl Packet {
    /// The packet's text, without its newline; none for a flush or delim.
    pub fn text(&self) -> Option<String> {
        match self {
            Packet::Data(data) => {
                let data = data.strip_suffix(b"\n").unwrap_or(data);
                Some(String::from_utf8_lossy(data).into_owned())
            }
            _ => None,
        }
    }
}

pub struct Reader<R: Read> {
    inner: R,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader { inner }
    }

    /// The next packet; none at the end of the stream (between packets).
    pub fn packet(&mut self) -> Result<Option<Packet>> {
        let mut head = [0u8; 4];
        match read_full(&mut self.inner, &mut head)? {
            0 => return Ok(None),
            4 => {}
            _ => bail!("the stream ended inside a packet's length"),
        }
        let text = std::str::from_utf8(&head).context("a packet's length is not hex")?;
        let len = usize::from_str_radix(text, 16)
            .with_context(|| format!("a packet's length `{text}` is not hex"))?;
        match len {
            0 => Ok(Some(Packet::Flush)),
            1 => Ok(Some(Packet::Delim)),
            2 | 3 => bail!("a packet of length {len} is not one git-lfs sends"),
            _ if len - 4 > MAX_DATA => {
                bail!("a packet of {len} bytes is longer than pkt-line allows")
            }
            _ => {
                let mut data = vec![0u8; len - 4];
                if read_full(&mut self.inner, &mut data)? != data.len() {
                    bail!("the stream ended inside a packet");
                }
                Ok(Some(Packet::Data(data)))
            }
        }
    }

    /// The next packet, which must be there.
    pub fn expect(&mut self) -> Result<Packet> {
        self.packet()?
            .context("the client hung up inside a request")
    }

    /// Text packets up to a flush (or, with `or_delim`, a delim, which is returned as `true`).
    pub fn lines(&mut self, or_delim: bool) -> Result<(Vec<String>, bool)> {
        let mut lines = Vec::new();
        loop {
            match self.expect()? {
                Packet::Flush => return Ok((lines, false)),
                Packet::Delim if or_delim => return Ok((lines, true)),
                Packet::Delim => bail!("a delimiter where none belongs"),
                packet => lines.push(packet.text().unwrap_or_default()),
            }
        }
    }
}

/// Reads until `buf` is full or the stream ends; how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match reader.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(at)
}

pub struct Writer<W: Write> {
    inner: W,
}

impl<W: Write> Writer<W> {
    pub fn new(inner: W) -> Self {
        Writer { inner }
    }

    pub fn data(&mut self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_DATA) {
            write!(self.inner, "{:04x}", chunk.len() + 4)?;
            self.inner.write_all(chunk)?;
        }
        Ok(())
    }

    /// A text packet: `text` and a newline.
    pub fn text(&mut self, text: &str) -> io::Result<()> {
        self.data(format!("{text}\n").as_bytes())
    }

    pub fn delim(&mut self) -> io::Result<()> {
        self.inner.write_all(b"0001")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.write_all(b"0000")?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_read_back_as_written_and_damage_is_refused() {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        w.text("version 1").unwrap();
        w.delim().unwrap();
        w.data(&vec![7u8; MAX_DATA + 10]).unwrap();
        w.flush().unwrap();
        assert!(out.starts_with(b"000eversion 1\n0001fff0"));
        let mut r = Reader::new(&out[..]);
        assert_eq!(r.expect().unwrap().text().unwrap(), "version 1");
        assert_eq!(r.expect().unwrap(), Packet::Delim);
        assert_eq!(r.expect().unwrap(), Packet::Data(vec![7; MAX_DATA]));
        assert_eq!(r.expect().unwrap(), Packet::Data(vec![7; 10]));
        assert_eq!(r.expect().unwrap(), Packet::Flush);
        assert!(r.packet().unwrap().is_none());

        for bad in [&b"00"[..], b"zzzz", b"0002", b"0010short", b"ffffxxxx"] {
            assert!(Reader::new(bad).packet().is_err(), "{bad:?}");
        }
    }
}
