//! A repository's Git LFS objects: `<repo>/lfs/objects/<oid[0:2]>/<oid[2:4]>/<oid>`, the layout
//! git-lfs itself uses, each file named by the SHA-256 of its content, written once (through a
//! temporary file in `lfs/incomplete/`, checked, then renamed) and read-only after.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The largest pointer file git-lfs writes is well under this; a blob this big is no pointer.
pub const POINTER_MAX: usize = 1024;

/// What a pointer file names: an object and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub oid: String,
    pub size: u64,
}

impl Pointer {
    /// The pointer a blob is, if it is one: `version https://git-lfs.github.com/spec/v1`, then
    /// `key value` lines (sorted, each once) with `oid sha256:<64 hex>` and `size <bytes>`.
    pub fn parse(blob: &[u8]) -> Option<Pointer> {
        if blob.len() >= POINTER_MAX {
            return None;
        }
        let text = std::str::from_utf8(blob).ok()?;
        let rest = text.strip_prefix("version https://git-lfs.github.com/spec/v1\n")?;
        if !rest.ends_with('\n') {
            return None;
        }
        let (mut oid, mut size) = (None, None);
        let mut last = "";
        for line in rest.lines() {
            let (key, value) = line.split_once(' ')?;
            if key <= last {
                return None;
            }
            last = key;
            match key {
                "oid" => oid = Some(value.strip_prefix("sha256:")?.to_string()),
                "size" => size = Some(value.parse::<u64>().ok()?),
                _ if key.starts_with("ext-") => {}
                _ => return None,
            }
        }
        let oid = oid.filter(|oid| valid_oid(oid))?;
        Some(Pointer { oid, size: size? })
    }
}

/// Whether `oid` is one git-lfs names objects by: 64 lowercase hex digits.
pub fn valid_oid(oid: &str) -> bool {
    oid.len() == 64
        && oid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The LFS objects of one repository.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store of the bare repository `repo`.
    pub fn of_repo(repo: &Path) -> Store {
        Store {
            dir: repo.join("lfs"),
        }
    }

    /// Where object `oid` is kept (`oid` must be valid).
    pub fn object(&self, oid: &str) -> PathBuf {
        self.dir
            .join("objects")
            .join(&oid[..2])
            .join(&oid[2..4])
            .join(oid)
    }

    /// Whether the store holds `oid`, of `size` bytes.
    pub fn has(&self, oid: &str, size: u64) -> bool {
        valid_oid(oid)
            && fs::metadata(self.object(oid)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Object `oid` to read, and its size.
    pub fn open(&self, oid: &str) -> Result<(File, u64)> {
        if !valid_oid(oid) {
            bail!("`{oid}` is not a Git LFS object id");
        }
        let path = self.object(oid);
        let file =
            File::open(&path).with_context(|| format!("object {oid} is not on the server"))?;
        let size = file
            .metadata()
            .with_context(|| format!("failed to stat `{}`", path.display()))?
            .len();
        Ok((file, size))
    }

    /// Keeps what `from` gives as object `oid` of `size` bytes, once its size and SHA-256 say it
    /// is that object; nothing is kept otherwise.
    pub fn receive(&self, oid: &str, size: u64, from: &mut dyn Read) -> Result<()> {
        if !valid_oid(oid) {
            bail!("`{oid}` is not a Git LFS object id");
        }
        let incomplete = self.dir.join("incomplete");
        fs::create_dir_all(&incomplete)
            .with_context(|| format!("failed to create `{}`", incomplete.display()))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{oid}."))
            .tempfile_in(&incomplete)
            .with_context(|| format!("failed to create a file in `{}`", incomplete.display()))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut got: u64 = 0;
        loop {
            let n = from.read(&mut buf).context("failed to read the object")?;
            if n == 0 {
                break;
            }
            got += n as u64;
            if got > size {
                // Read on to the end, so the protocol stays in step, but keep nothing more.
                continue;
            }
            hash.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .with_context(|| format!("failed to write object {oid}"))?;
        }
        if got != size {
            bail!("object {oid} was sent with {got} bytes, not the {size} it names");
        }
        let actual = format!("{:x}", hash.finalize());
        if actual != oid {
            bail!("what was sent as object {oid} has the SHA-256 {actual}");
        }
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("failed to write object {oid}"))?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o444))
            .with_context(|| format!("failed to write object {oid}"))?;
        let path = self.object(oid);
        let parent = path.parent().expect("an object has a folder");
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create `{}`", parent.display()))?;
        tmp.persist(&path)
            .map_err(|err| err.error)
            .with_context(|| format!("failed to keep object {oid}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    #[test]
    fn pointers_are_read_strictly() {
        let text =
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize 12345\n");
        assert_eq!(
            Pointer::parse(text.as_bytes()),
            Some(Pointer {
                oid: OID.into(),
                size: 12345
            })
        );
        let ext = format!(
            "version https://git-lfs.github.com/spec/v1\next-0-foo sha256:{OID}\noid sha256:{OID}\nsize 1\n"
        );
        assert!(Pointer::parse(ext.as_bytes()).is_some());
        for bad in [
            text.replace("size 12345\n", "size 12345"),
            text.replace("size 12345", "size -1"),
            text.replace("sha256:", "sha1:"),
            text.replace(OID, &OID.to_uppercase()),
            text.replace("oid sha256", "zid sha256"),
            format!("version https://git-lfs.github.com/spec/v1\nsize 1\noid sha256:{OID}\n"),
            text.replace("v1", "v2"),
            format!("{text}{}", "x".repeat(POINTER_MAX)),
        ] {
            assert_eq!(Pointer::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn an_object_is_kept_only_when_its_size_and_hash_match() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::of_repo(dir.path());
        let content = b"hello lfs\n";
        let oid = format!("{:x}", Sha256::digest(content));
        let err = store.receive(&oid, 99, &mut &content[..]).unwrap_err();
        assert!(
            format!("{err:#}").contains("with 10 bytes, not the 99"),
            "{err:#}"
        );
        let err = store.receive(OID, 10, &mut &content[..]).unwrap_err();
        assert!(format!("{err:#}").contains("has the SHA-256"), "{err:#}");
        assert!(!store.has(&oid, 10));
        assert_eq!(
            fs::read_dir(dir.path().join("lfs/incomplete"))
                .unwrap()
                .count(),
            0
        );
        store.receive(&oid, 10, &mut &content[..]).unwrap();
        assert!(store.has(&oid, 10) && !store.has(&oid, 11));
        assert_eq!(fs::read(store.object(&oid)).unwrap(), content);
        let mode = fs::metadata(store.object(&oid))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        assert!(store.open("../etc/passwd").is_err());
    }
}
