//! On-disk state under `--state-dir`: resources (`resources/<repo>/<type>/<tag>`), policies,
//! reference values and the token signing key. Every write is atomic: a new 0600 file in the
//! same directory, written, fsynced, renamed over the target, then the directory fsynced — a
//! crash (kill -9, power loss) leaves the old or the new content, never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use podvm_attestation::kbs_client::ResourceUri;

/// Prefix and suffix of in-flight temporary files. `~` cannot occur in a resource segment, so a
/// temporary is never served as a resource.
const TMP_PREFIX: &str = ".podvm-tmp-";
const TMP_SUFFIX: &str = "~";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Create a directory tree with mode 0700.
pub fn mkdir_private(path: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io("mkdir", path))
}

/// Atomically replace `path` with `data` (0600, fsync file and directory).
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    mkdir_private(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{name}.{}.{}{TMP_SUFFIX}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(data).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("rename", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Read a file; `Ok(None)` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            op: "read",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open (create, 0700) the state directory and remove temporaries a crash left behind.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        mkdir_private(&root.join("resources"))?;
        let s = Store {
            root: root.to_path_buf(),
        };
        s.remove_temporaries(&root.join("resources"), 0);
        s.remove_temporaries(root, 3);
        Ok(s)
    }

    fn remove_temporaries(&self, dir: &Path, depth: u32) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) && name.ends_with(TMP_SUFFIX) {
                let _ = fs::remove_file(&p);
            } else if depth < 3 && p.is_dir() {
                self.remove_temporaries(&p, depth + 1);
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a resource (the URI's segments were validated: no `..`, no `/`).
    pub fn resource_path(&self, uri: &ResourceUri) -> PathBuf {
        self.root
            .join("resources")
            .join(&uri.repository)
            .join(&uri.resource_type)
            .join(&uri.tag)
    }

    pub fn get_resource(&self, uri: &ResourceUri) -> Result<Option<Vec<u8>>, StoreError> {
        read_optional(&self.resource_path(uri))
    }

    pub fn put_resource(&self, uri: &ResourceUri, data: &[u8]) -> Result<(), StoreError> {
        atomic_write(&self.resource_path(uri), data)
    }

    /// A state file (policy, reference values, key) by name.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_with_0600_and_cleans_up() {
        let d = tempfile::tempdir().expect("tmp");
        let s = Store::open(d.path()).expect("open");
        let uri = ResourceUri::from_path("r/t/k").expect("uri");
        assert_eq!(s.get_resource(&uri).expect("get"), None);
        s.put_resource(&uri, b"one").expect("put");
        s.put_resource(&uri, b"two").expect("put");
        assert_eq!(
            s.get_resource(&uri).expect("get").as_deref(),
            Some(&b"two"[..])
        );
        let mode = fs::metadata(s.resource_path(&uri))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A leftover temporary is removed on open and never listed as a resource.
        let dir = s.resource_path(&uri).parent().expect("dir").to_path_buf();
        let tmp = dir.join(format!("{TMP_PREFIX}k.1.2{TMP_SUFFIX}"));
        fs::write(&tmp, b"torn").expect("write");
        Store::open(d.path()).expect("reopen");
        assert!(!tmp.exists());
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("rd")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("k")]);
    }
}
