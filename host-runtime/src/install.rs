//! `podvm install containerd`: registers podvm's runtimes (the RuntimeClass handlers) in
//! containerd's CRI configuration and writes podvm's shim configuration files.
//!
//! The containerd configuration is edited with `toml_edit`, so the user's other content, comments
//! and layout are kept; a key is only rewritten when its value differs, so a second run produces
//! the same bytes and is reported as "nothing changed". The file is replaced atomically (temp file
//! in the same directory + rename, same mode and owner) after a backup of the previous content.
//!
//! containerd's configuration `version = 2` (containerd 1.x) keeps the CRI runtimes under
//! `plugins."io.containerd.grpc.v1.cri".containerd.runtimes`, `version = 3` (containerd 2.x) under
//! `plugins."io.containerd.cri.v1.runtime".containerd.runtimes`. A file without `version` is
//! version 1, which is refused.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table, Value};

/// containerd's runtime type of podvm's shim (`containerd-shim-podvm-v2`).
pub const RUNTIME_TYPE: &str = "io.containerd.podvm.v2";
/// The shim binary's name.
pub const SHIM_BINARY: &str = "containerd-shim-podvm-v2";
/// The pod annotations containerd passes through to the shim.
pub const POD_ANNOTATIONS: &str = "io.podvm.*";
/// The shim configuration template (`deploy/configuration.toml`).
pub const CONFIG_TEMPLATE: &str = include_str!("../../deploy/configuration.toml");

/// One of podvm's containerd runtimes: a RuntimeClass handler and its shim configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    /// The runtime's name in containerd's config, and the RuntimeClass `handler`.
    pub name: &'static str,
    /// The shim configuration file's name in the podvm configuration directory.
    pub config_file: &'static str,
    /// The `[tee] mode` of that configuration.
    pub tee_mode: &'static str,
}

/// podvm's four runtimes.
pub const RUNTIMES: [Runtime; 4] = [
    Runtime {
        name: "podvm",
        config_file: "configuration.toml",
        tee_mode: "none",
    },
    Runtime {
        name: "podvm-snp",
        config_file: "configuration-snp.toml",
        tee_mode: "snp",
    },
    Runtime {
        name: "podvm-tdx",
        config_file: "configuration-tdx.toml",
        tee_mode: "tdx",
    },
    Runtime {
        name: "podvm-emulated",
        config_file: "configuration-snp-emulated.toml",
        tee_mode: "snp-emulated",
    },
];

/// What went wrong. Each is one line: what, where, what to do.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "{path}: containerd config version 1 is not supported; run `containerd config default > {path}` and retry"
    )]
    Version1 { path: String },
    #[error(
        "{path}: containerd config version {version} is not supported (podvm knows versions 2 and 3); regenerate it with `containerd config default > {path}` and retry"
    )]
    UnknownVersion { path: String, version: String },
    #[error("{path}: not valid TOML: {message}; fix the file and retry")]
    Parse { path: String, message: String },
    #[error("{path}: `{key}` is not a table; fix it by hand (make it a [table]) and retry")]
    NotATable { path: String, key: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.display().to_string();
    move |source| InstallError::Io { what, path, source }
}

/// containerd's configuration versions podvm can edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigVersion {
    V2,
    V3,
}

impl ConfigVersion {
    /// The path of the CRI runtimes table.
    pub fn runtimes_path(self) -> [&'static str; 4] {
        match self {
            ConfigVersion::V2 => [
                "plugins",
                "io.containerd.grpc.v1.cri",
                "containerd",
                "runtimes",
            ],
            ConfigVersion::V3 => [
                "plugins",
                "io.containerd.cri.v1.runtime",
                "containerd",
                "runtimes",
            ],
        }
    }

    pub fn number(self) -> u8 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
        }
    }
}

/// The result of editing a containerd configuration's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    pub version: ConfigVersion,
    /// The new text (equal to the old one when nothing changed).
    pub text: String,
    /// The runtimes added, updated or removed.
    pub touched: Vec<&'static str>,
}

/// A new containerd configuration when the file does not exist.
pub const MINIMAL_CONFIG: &str = "# containerd configuration, created by `podvm install containerd`.\n# `containerd config default` shows every setting.\nversion = 2\n";

fn parse(text: &str, path: &Path) -> Result<(DocumentMut, ConfigVersion), InstallError> {
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| InstallError::Parse {
            path: path.display().to_string(),
            message: e.message().trim().to_string(),
        })?;
    let version = match doc.get("version") {
        None => {
            return Err(InstallError::Version1 {
                path: path.display().to_string(),
            });
        }
        Some(item) => match item.as_integer() {
            Some(1) => {
                return Err(InstallError::Version1 {
                    path: path.display().to_string(),
                });
            }
            Some(2) => ConfigVersion::V2,
            Some(3) => ConfigVersion::V3,
            _ => {
                return Err(InstallError::UnknownVersion {
                    path: path.display().to_string(),
                    version: item.to_string().trim().to_string(),
                });
            }
        },
    };
    Ok((doc, version))
}

/// The runtimes table, created (as implicit tables) if `create`.
fn runtimes_table<'a>(
    doc: &'a mut DocumentMut,
    version: ConfigVersion,
    path: &Path,
    create: bool,
) -> Result<Option<&'a mut Table>, InstallError> {
    let mut table = doc.as_table_mut();
    let mut key_path = String::new();
    for key in version.runtimes_path() {
        if !key_path.is_empty() {
            key_path.push('.');
        }
        key_path.push_str(&toml_edit::Key::new(key).display_repr());
        if !table.contains_key(key) {
            if !create {
                return Ok(None);
            }
            let mut new = Table::new();
            new.set_implicit(true);
            table.insert(key, Item::Table(new));
        }
        table = table
            .get_mut(key)
            .and_then(Item::as_table_mut)
            .ok_or_else(|| InstallError::NotATable {
                path: path.display().to_string(),
                key: key_path.clone(),
            })?;
    }
    Ok(Some(table))
}

/// A value podvm wants for a key.
enum Want<'a> {
    Str(&'a str),
    Bool(bool),
    StrArray(&'a [&'a str]),
}

impl Want<'_> {
    fn matches(&self, item: Option<&Item>) -> bool {
        let Some(value) = item.and_then(Item::as_value) else {
            return false;
        };
        match self {
            Want::Str(s) => value.as_str() == Some(s),
            Want::Bool(b) => value.as_bool() == Some(*b),
            Want::StrArray(items) => value.as_array().is_some_and(|a| {
                a.len() == items.len()
                    && a.iter()
                        .zip(items.iter())
                        .all(|(v, s)| v.as_str() == Some(s))
            }),
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Want::Str(s) => Value::from(*s),
            Want::Bool(b) => Value::from(*b),
            Want::StrArray(items) => Value::Array(items.iter().copied().collect::<Array>()),
        }
    }
}

/// Sets `key` to `want` unless it already has that value (so that the user's formatting of an
/// unchanged key is kept). Returns whether it changed.
fn set(table: &mut Table, key: &str, want: Want<'_>) -> bool {
    if want.matches(table.get(key)) {
        return false;
    }
    match table.get_mut(key).and_then(Item::as_value_mut) {
        Some(old) => {
            let decor = old.decor().clone();
            *old = want.to_value();
            *old.decor_mut() = decor;
        }
        None => {
            table.insert(key, Item::Value(want.to_value()));
        }
    }
    true
}

/// Adds (or updates) podvm's four runtimes in the containerd configuration `text` (`None`: the
/// file does not exist; a minimal version-2 configuration is created). `path` only names the file
/// in errors.
pub fn add_runtimes(
    text: Option<&str>,
    path: &Path,
    shim: &Path,
    podvm_config_dir: &Path,
) -> Result<Edited, InstallError> {
    let original = text.unwrap_or(MINIMAL_CONFIG);
    let (mut doc, version) = parse(original, path)?;
    let runtimes = runtimes_table(&mut doc, version, path, true)?.expect("created");
    let base_key = version
        .runtimes_path()
        .map(|k| toml_edit::Key::new(k).display_repr().into_owned())
        .join(".");
    let shim = shim.to_string_lossy();
    let mut touched = Vec::new();
    for runtime in RUNTIMES {
        let config_path = podvm_config_dir.join(runtime.config_file);
        let config_path = config_path.to_string_lossy();
        if !runtimes.contains_key(runtime.name) {
            runtimes.insert(runtime.name, Item::Table(Table::new()));
        }
        let key = format!("{base_key}.{}", runtime.name);
        let entry = runtimes
            .get_mut(runtime.name)
            .and_then(Item::as_table_mut)
            .ok_or_else(|| InstallError::NotATable {
                path: path.display().to_string(),
                key: key.clone(),
            })?;
        let mut changed = false;
        changed |= set(entry, "runtime_type", Want::Str(RUNTIME_TYPE));
        changed |= set(entry, "runtime_path", Want::Str(&shim));
        changed |= set(entry, "pod_annotations", Want::StrArray(&[POD_ANNOTATIONS]));
        changed |= set(entry, "privileged_without_host_devices", Want::Bool(true));
        if !entry.contains_key("options") {
            entry.insert("options", Item::Table(Table::new()));
        }
        let options = entry
            .get_mut("options")
            .and_then(Item::as_table_mut)
            .ok_or_else(|| InstallError::NotATable {
                path: path.display().to_string(),
                key: format!("{key}.options"),
            })?;
        changed |= set(options, "ConfigPath", Want::Str(&config_path));
        if changed {
            touched.push(runtime.name);
        }
    }
    Ok(Edited {
        version,
        text: doc.to_string(),
        touched,
    })
}

/// Removes podvm's four runtimes (and nothing else) from the containerd configuration `text`.
pub fn remove_runtimes(text: &str, path: &Path) -> Result<Edited, InstallError> {
    let (mut doc, version) = parse(text, path)?;
    let mut touched = Vec::new();
    if let Some(runtimes) = runtimes_table(&mut doc, version, path, false)? {
        for runtime in RUNTIMES {
            if runtimes.remove(runtime.name).is_some() {
                touched.push(runtime.name);
            }
        }
    }
    let text = if touched.is_empty() {
        text.to_string()
    } else {
        doc.to_string()
    };
    Ok(Edited {
        version,
        text,
        touched,
    })
}

/// The shim configuration for `tee_mode`: the template with `[tee] mode` set (the table is added
/// if the template has none).
pub fn shim_config(template: &str, runtime: &Runtime) -> Result<String, InstallError> {
    let origin = Path::new("deploy/configuration.toml");
    let mut doc: DocumentMut =
        template
            .parse()
            .map_err(|e: toml_edit::TomlError| InstallError::Parse {
                path: origin.display().to_string(),
                message: e.message().trim().to_string(),
            })?;
    if !doc.contains_key("tee") {
        let mut tee = Table::new();
        tee.decor_mut()
            .set_prefix("\n# The TEE of each task's VM: none, snp, tdx or snp-emulated.\n");
        doc.insert("tee", Item::Table(tee));
    }
    let tee = doc
        .get_mut("tee")
        .and_then(Item::as_table_mut)
        .ok_or_else(|| InstallError::NotATable {
            path: origin.display().to_string(),
            key: "tee".into(),
        })?;
    set(tee, "mode", Want::Str(runtime.tee_mode));
    let mut text = format!(
        "# Written by `podvm install containerd` for containerd's runtime `{}` (RuntimeClass handler).\n{}",
        runtime.name, doc
    );
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Where a shim configuration file stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFileOutcome {
    Written(PathBuf),
    WouldWrite(PathBuf),
    Kept(PathBuf),
}

/// Writes the four shim configuration files into `dir` (created 0755 if absent); an existing
/// file is never overwritten.
pub fn write_shim_configs(
    dir: &Path,
    dry_run: bool,
) -> Result<Vec<ConfigFileOutcome>, InstallError> {
    let mut outcomes = Vec::new();
    for runtime in RUNTIMES {
        let path = dir.join(runtime.config_file);
        if path.exists() {
            outcomes.push(ConfigFileOutcome::Kept(path));
            continue;
        }
        let text = shim_config(CONFIG_TEMPLATE, &runtime)?;
        if dry_run {
            outcomes.push(ConfigFileOutcome::WouldWrite(path));
            continue;
        }
        fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        write_atomically(&path, &text, None)?;
        outcomes.push(ConfigFileOutcome::Written(path));
    }
    Ok(outcomes)
}

/// The backup's name for `path` at this moment: `<path>.podvm-backup-<UTC timestamp>` (with a
/// `-N` suffix should that exist already).
pub fn backup_path(path: &Path) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let base = format!("{}.podvm-backup-{stamp}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// Replaces `path` by `text` atomically: a temp file in the same directory with the mode and
/// owner of `like` (the previous file), else 0644, fsynced, then renamed over `path`.
pub fn write_atomically(
    path: &Path,
    text: &str,
    like: Option<&fs::Metadata>,
) -> Result<(), InstallError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.podvm-tmp-{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        let mode = like
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(m) = like {
            // Only root can give a file away; keep ours otherwise.
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))?;
            }
        }
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err("cannot write", path))
}

/// What [`apply`] did to a containerd configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub edited: Edited,
    /// Whether the content changed (and so was, or in a dry run would be, written).
    pub changed: bool,
    /// Whether the file existed before.
    pub existed: bool,
    /// The backup of the previous content (none if nothing changed, the file is new, or dry run).
    pub backup: Option<PathBuf>,
}

/// Edits the containerd configuration at `path` with `edit` (its current text, `None` if absent)
/// and, unless `dry_run` or nothing changed, backs up the old file and writes the new one.
pub fn apply(
    path: &Path,
    dry_run: bool,
    edit: impl FnOnce(Option<&str>) -> Result<Edited, InstallError>,
) -> Result<Applied, InstallError> {
    let (old, meta) = match fs::read_to_string(path) {
        Ok(text) => (
            Some(text),
            Some(fs::metadata(path).map_err(io_err("cannot read", path))?),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
        Err(e) => return Err(io_err("cannot read", path)(e)),
    };
    let edited = edit(old.as_deref())?;
    let changed = old.as_deref() != Some(edited.text.as_str());
    let mut backup = None;
    if changed && !dry_run {
        if let Some(old) = &old {
            let target = backup_path(path);
            write_atomically(&target, old, meta.as_ref())?;
            backup = Some(target);
        } else if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        write_atomically(path, &edited.text, meta.as_ref())?;
    }
    Ok(Applied {
        edited,
        changed,
        existed: old.is_some(),
        backup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIM: &str = "/usr/local/bin/containerd-shim-podvm-v2";

    fn add(text: Option<&str>) -> Result<Edited, InstallError> {
        add_runtimes(
            text,
            Path::new("/etc/containerd/config.toml"),
            Path::new(SHIM),
            Path::new("/etc/podvm"),
        )
    }

    fn table<'a>(doc: &'a toml_edit::DocumentMut, path: &[&str]) -> &'a Table {
        let mut t = doc.as_table();
        for k in path {
            t = t[*k].as_table().unwrap_or_else(|| panic!("no table {k}"));
        }
        t
    }

    fn check_entries(text: &str, version: ConfigVersion) {
        let doc: DocumentMut = text.parse().unwrap();
        let runtimes = table(&doc, &version.runtimes_path());
        for runtime in RUNTIMES {
            let entry = runtimes[runtime.name].as_table().unwrap();
            assert_eq!(entry["runtime_type"].as_str(), Some(RUNTIME_TYPE));
            assert_eq!(entry["runtime_path"].as_str(), Some(SHIM));
            assert_eq!(
                entry["privileged_without_host_devices"].as_bool(),
                Some(true)
            );
            let annotations = entry["pod_annotations"].as_array().unwrap();
            assert_eq!(annotations.len(), 1);
            assert_eq!(annotations.get(0).unwrap().as_str(), Some("io.podvm.*"));
            assert_eq!(
                entry["options"]["ConfigPath"].as_str(),
                Some(format!("/etc/podvm/{}", runtime.config_file).as_str())
            );
        }
        // The serde view agrees (what containerd's TOML decoder sees).
        let value: toml::Value = toml::from_str(text).unwrap();
        let mut v = &value;
        for k in version.runtimes_path() {
            v = &v[k];
        }
        assert_eq!(
            v["podvm-snp"]["options"]["ConfigPath"].as_str(),
            Some("/etc/podvm/configuration-snp.toml")
        );
    }

    const V2_USER: &str = r#"# my containerd config: keep this comment
version = 2
root = "/var/lib/containerd"   # trailing comment

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    # the default runtime
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            SystemdCgroup = true

# a comment at the end
[metrics]
  address = ""
"#;

    #[test]
    fn version_2_gets_the_four_runtimes_and_keeps_user_content() {
        let edited = add(Some(V2_USER)).unwrap();
        assert_eq!(edited.version, ConfigVersion::V2);
        assert_eq!(
            edited.touched,
            vec!["podvm", "podvm-snp", "podvm-tdx", "podvm-emulated"]
        );
        check_entries(&edited.text, ConfigVersion::V2);
        for kept in [
            "# my containerd config: keep this comment\n",
            "root = \"/var/lib/containerd\"   # trailing comment\n",
            "    # the default runtime\n",
            "            SystemdCgroup = true\n",
            "# a comment at the end\n[metrics]\n  address = \"\"\n",
            "sandbox_image = \"registry.k8s.io/pause:3.9\"",
        ] {
            assert!(
                edited.text.contains(kept),
                "lost {kept:?}:\n{}",
                edited.text
            );
        }
        // Everything the user had is still there, byte for byte, in order.
        let mut rest = edited.text.as_str();
        for line in V2_USER.lines() {
            let at = rest
                .find(line)
                .unwrap_or_else(|| panic!("lost {line:?}:\n{}", edited.text));
            rest = &rest[at + line.len()..];
        }
    }

    #[test]
    fn version_3_uses_the_containerd_2_table() {
        let text = "version = 3\n\n[plugins.'io.containerd.cri.v1.runtime'.containerd]\n  default_runtime_name = 'runc'\n";
        let edited = add(Some(text)).unwrap();
        assert_eq!(edited.version, ConfigVersion::V3);
        check_entries(&edited.text, ConfigVersion::V3);
        assert!(
            !edited.text.contains("io.containerd.grpc.v1.cri"),
            "{}",
            edited.text
        );
        assert!(edited.text.contains("default_runtime_name = 'runc'"));
    }

    #[test]
    fn a_missing_file_becomes_a_minimal_version_2_config() {
        let edited = add(None).unwrap();
        assert_eq!(edited.version, ConfigVersion::V2);
        assert!(edited.text.starts_with(MINIMAL_CONFIG));
        check_entries(&edited.text, ConfigVersion::V2);
        // Implicit parents: no empty [plugins] headers.
        assert!(!edited.text.contains("[plugins]\n"), "{}", edited.text);
        assert!(
            edited
                .text
                .contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.podvm]\n"),
            "{}",
            edited.text
        );
    }

    #[test]
    fn version_1_and_unknown_versions_are_refused_in_one_line() {
        let e = add(Some("root = \"/var/lib/containerd\"\n")).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, InstallError::Version1 { .. }));
        assert!(
            msg.contains(
                "/etc/containerd/config.toml: containerd config version 1 is not supported"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("containerd config default > /etc/containerd/config.toml"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        assert!(matches!(
            add(Some("version = 1\n")).unwrap_err(),
            InstallError::Version1 { .. }
        ));
        let e = add(Some("version = 4\n")).unwrap_err();
        assert!(e.to_string().contains("version 4 is not supported"), "{e}");
        let e = add(Some("version = 2\n[plugins\n")).unwrap_err();
        assert!(matches!(e, InstallError::Parse { .. }), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
        let e = add(Some("version = 2\nplugins = 3\n")).unwrap_err();
        assert!(e.to_string().contains("`plugins` is not a table"), "{e}");
    }

    #[test]
    fn dotted_keys_and_inline_tables() {
        let dotted = "version = 2\n[plugins]\n\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.runtime_type = \"io.containerd.runc.v2\"\n";
        let edited = add(Some(dotted)).unwrap();
        check_entries(&edited.text, ConfigVersion::V2);
        assert!(edited.text.starts_with(dotted), "{}", edited.text);
        assert_eq!(add(Some(&edited.text)).unwrap().text, edited.text);
        let e = add(Some(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = {}\n",
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "`plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes` is not a table"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_second_run_changes_nothing() {
        for start in [Some(V2_USER), None, Some("version = 3\n")] {
            let first = add(start).unwrap();
            let second = add(Some(&first.text)).unwrap();
            assert_eq!(second.text, first.text);
            assert!(second.touched.is_empty());
        }
    }

    #[test]
    fn a_stale_entry_is_updated_and_the_users_formatting_of_equal_keys_kept() {
        let first = add(Some(V2_USER)).unwrap();
        let moved = first
            .text
            .replace(SHIM, "/opt/old/containerd-shim-podvm-v2");
        let edited = add(Some(&moved)).unwrap();
        assert_eq!(edited.text, first.text);
        assert_eq!(edited.touched.len(), 4);
    }

    #[test]
    fn uninstall_removes_only_podvms_entries() {
        let installed = add(Some(V2_USER)).unwrap();
        let removed = remove_runtimes(&installed.text, Path::new("c.toml")).unwrap();
        assert_eq!(removed.touched.len(), 4);
        assert_eq!(removed.text, V2_USER);
        // Nothing to remove: the text is returned as it was.
        let again = remove_runtimes(&removed.text, Path::new("c.toml")).unwrap();
        assert!(again.touched.is_empty());
        assert_eq!(again.text, V2_USER);
        // A runtime of the user's with a podvm-like name is not podvm's.
        let other = format!(
            "{V2_USER}[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.podvm-other]\nruntime_type = \"x\"\n"
        );
        let installed = add(Some(&other)).unwrap();
        let removed = remove_runtimes(&installed.text, Path::new("c.toml")).unwrap();
        assert_eq!(removed.text, other);
    }

    #[test]
    fn shim_configs_get_their_tee_mode_with_or_without_a_tee_table() {
        let without = "[vm]\nvcpus = 1\n";
        let with = "[vm]\nvcpus = 1\n\n[tee]\n# the TEE\nmode = \"none\"  # keep\n";
        for template in [without, with, CONFIG_TEMPLATE] {
            for runtime in RUNTIMES {
                let text = shim_config(template, &runtime).unwrap();
                let value: toml::Value = toml::from_str(&text).unwrap();
                assert_eq!(
                    value["tee"]["mode"].as_str(),
                    Some(runtime.tee_mode),
                    "{text}"
                );
                assert_eq!(value["vm"]["vcpus"].as_integer(), Some(1));
            }
        }
        let text = shim_config(with, &RUNTIMES[1]).unwrap();
        assert!(
            text.contains("# the TEE\nmode = \"snp\"  # keep\n"),
            "{text}"
        );
    }

    #[test]
    fn files_are_written_atomically_with_a_backup_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, V2_USER).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let edit =
            |t: Option<&str>| add_runtimes(t, &path, Path::new(SHIM), Path::new("/etc/podvm"));
        // Dry run: nothing written.
        let dry = apply(&path, true, edit).unwrap();
        assert!(dry.changed && dry.backup.is_none());
        assert_eq!(fs::read_to_string(&path).unwrap(), V2_USER);

        let first = apply(&path, false, edit).unwrap();
        assert!(first.changed);
        let backup = first.backup.clone().unwrap();
        assert!(
            backup
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("config.toml.podvm-backup-")
        );
        assert_eq!(fs::read_to_string(&backup).unwrap(), V2_USER);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let after_first = fs::read(&path).unwrap();

        let second = apply(&path, false, edit).unwrap();
        assert!(!second.changed && second.backup.is_none());
        assert_eq!(fs::read(&path).unwrap(), after_first);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // A missing file in a missing directory is created, without a backup.
        let new = dir.path().join("etc/containerd/config.toml");
        let created = apply(&new, false, |t| {
            add_runtimes(t, &new, Path::new(SHIM), Path::new("/etc/podvm"))
        })
        .unwrap();
        assert!(created.changed && !created.existed && created.backup.is_none());
        assert_eq!(
            fs::metadata(&new).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn existing_shim_configs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("configuration-tdx.toml");
        fs::write(&mine, "# mine\n").unwrap();
        let dry = write_shim_configs(dir.path(), true).unwrap();
        assert_eq!(
            dry.iter()
                .filter(|o| matches!(o, ConfigFileOutcome::WouldWrite(_)))
                .count(),
            3
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let outcomes = write_shim_configs(dir.path(), false).unwrap();
        assert!(outcomes.contains(&ConfigFileOutcome::Kept(mine.clone())));
        assert_eq!(fs::read_to_string(&mine).unwrap(), "# mine\n");
        let snp = fs::read_to_string(dir.path().join("configuration-snp.toml")).unwrap();
        let value: toml::Value = toml::from_str(&snp).unwrap();
        assert_eq!(value["tee"]["mode"].as_str(), Some("snp"));
        let again = write_shim_configs(dir.path(), false).unwrap();
        assert!(
            again
                .iter()
                .all(|o| matches!(o, ConfigFileOutcome::Kept(_)))
        );
    }
}
