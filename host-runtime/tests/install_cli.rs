//! `podvm install containerd`, `podvm uninstall containerd` and `podvm cleanup`, run as the built
//! binary on files in a temporary directory (never /etc).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PODVM: &str = env!("CARGO_BIN_EXE_podvm");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("containerd-shim-podvm-v2");
        fs::write(&shim, "#!/bin/sh\nexit 1\n").unwrap();
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
        Env { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn config(&self) -> PathBuf {
        self.path("containerd/config.toml")
    }
    fn podvm(&self, args: &[&str]) -> Output {
        let output = Command::new(PODVM)
            .args(args)
            .env("PODVM_STATE_DIR", self.path("state"))
            .output()
            .unwrap();
        eprintln!(
            "podvm {args:?} → {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
    fn install(&self, extra: &[&str]) -> Output {
        let config = self.config();
        let shim = self.path("containerd-shim-podvm-v2");
        let podvm_dir = self.path("podvm");
        let mut args = vec![
            "install",
            "containerd",
            "--config",
            config.to_str().unwrap(),
            "--shim",
            shim.to_str().unwrap(),
            "--podvm-config-dir",
            podvm_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.podvm(&args)
    }
    fn backups(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(self.path("containerd"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        found.retain(|p| p.to_string_lossy().contains(".podvm-backup-"));
        found.sort();
        found
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `containerd --config FILE config dump` when containerd is installed: containerd accepts the
/// file and sees podvm's runtimes in it.
fn containerd_accepts(config: &Path) {
    let Ok(output) = Command::new("containerd")
        .args(["--config", config.to_str().unwrap(), "config", "dump"])
        .output()
    else {
        eprintln!("containerd is not installed: not checked with containerd");
        return;
    };
    let dump = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "containerd refused {}: {}",
        config.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["podvm", "podvm-snp", "podvm-tdx", "podvm-emulated"] {
        assert!(
            dump.contains(&format!(".containerd.runtimes.{name}]")),
            "containerd does not see runtime {name}:\n{dump}"
        );
    }
    assert!(
        dump.contains("runtime_type = \"io.containerd.podvm.v2\""),
        "{dump}"
    );
    assert!(dump.contains("ConfigPath = "), "{dump}");
}

#[test]
fn install_creates_is_idempotent_and_uninstall_restores() {
    let env = Env::new();
    // A missing file: a minimal version-2 config, no backup.
    let first = env.install(&[]);
    assert!(first.status.success());
    let out = stdout(&first);
    assert!(
        out.contains("added or updated runtimes podvm, podvm-snp, podvm-tdx, podvm-emulated"),
        "{out}"
    );
    assert!(out.contains("created the file"), "{out}");
    assert_eq!(out.matches("wrote ").count(), 4, "{out}");
    assert!(env.backups().is_empty());
    let text = fs::read_to_string(env.config()).unwrap();
    assert!(text.contains("version = 2"));
    containerd_accepts(&env.config());
    let snp = fs::read_to_string(env.path("podvm/configuration-snp.toml")).unwrap();
    assert!(snp.contains("mode = \"snp\""), "{snp}");

    // The second run: byte-identical, says so, no backup, the shim configs kept.
    let second = env.install(&[]);
    assert!(second.status.success());
    let out = stdout(&second);
    assert!(out.contains("already installed; nothing changed"), "{out}");
    assert_eq!(out.matches("kept ").count(), 4, "{out}");
    assert_eq!(fs::read_to_string(env.config()).unwrap(), text);
    assert!(env.backups().is_empty());

    // --restart with nothing changed does not restart.
    let restart = env.install(&["--restart"]);
    assert!(restart.status.success());
    assert!(stdout(&restart).contains("not restarting containerd"));

    // Uninstall: exactly podvm's entries, with a backup.
    let removed = env.podvm(&[
        "uninstall",
        "containerd",
        "--config",
        env.config().to_str().unwrap(),
    ]);
    assert!(removed.status.success());
    assert!(
        stdout(&removed).contains("removed runtimes podvm, podvm-snp, podvm-tdx, podvm-emulated")
    );
    let after = fs::read_to_string(env.config()).unwrap();
    assert!(!after.contains("runtimes.podvm"), "{after}");
    assert!(after.contains("version = 2"));
    assert_eq!(env.backups().len(), 1);
    assert_eq!(fs::read_to_string(&env.backups()[0]).unwrap(), text);
    let again = env.podvm(&[
        "uninstall",
        "containerd",
        "--config",
        env.config().to_str().unwrap(),
    ]);
    assert!(again.status.success());
    assert!(stdout(&again).contains("nothing changed"));
    assert_eq!(env.backups().len(), 1);
}

#[test]
fn install_into_an_existing_config_keeps_it_and_backs_it_up() {
    let env = Env::new();
    fs::create_dir_all(env.path("containerd")).unwrap();
    let user = "# the operator's notes\nversion = 2\noom_score = -999\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  # pinned\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n";
    fs::write(env.config(), user).unwrap();
    fs::set_permissions(env.config(), fs::Permissions::from_mode(0o640)).unwrap();

    let dry = env.install(&["--dry-run"]);
    assert!(dry.status.success());
    assert!(
        stdout(&dry).contains("would add or update"),
        "{}",
        stdout(&dry)
    );
    assert!(stdout(&dry).contains("dry run: nothing was written"));
    assert_eq!(fs::read_to_string(env.config()).unwrap(), user);
    assert!(!env.path("podvm").exists());

    assert!(env.install(&[]).status.success());
    let text = fs::read_to_string(env.config()).unwrap();
    assert!(text.starts_with(user), "{text}");
    assert_eq!(
        fs::metadata(env.config()).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let backups = env.backups();
    assert_eq!(backups.len(), 1);
    assert_eq!(fs::read_to_string(&backups[0]).unwrap(), user);
    containerd_accepts(&env.config());

    assert!(env.install(&[]).status.success());
    assert_eq!(fs::read_to_string(env.config()).unwrap(), text);
    assert_eq!(env.backups().len(), 1);
}

#[test]
fn version_3_is_supported_and_version_1_refused() {
    let env = Env::new();
    fs::create_dir_all(env.path("containerd")).unwrap();
    fs::write(env.config(), "version = 3\n").unwrap();
    assert!(env.install(&[]).status.success());
    let text = fs::read_to_string(env.config()).unwrap();
    assert!(
        text.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.podvm]"),
        "{text}"
    );

    assert_eq!(env.backups().len(), 1);
    let v1 = "root = \"/var/lib/containerd\"\n[plugins.cri]\n";
    fs::write(env.config(), v1).unwrap();
    let refused = env.install(&[]);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "containerd config version 1 is not supported; run `containerd config default >"
        ),
        "{err}"
    );
    assert_eq!(fs::read_to_string(env.config()).unwrap(), v1);
    assert_eq!(env.backups().len(), 1, "a refused file was backed up");
}

#[test]
fn a_missing_shim_is_a_one_line_error() {
    let env = Env::new();
    let missing = env.path("nowhere/containerd-shim-podvm-v2");
    let out = env.podvm(&[
        "install",
        "containerd",
        "--config",
        env.config().to_str().unwrap(),
        "--shim",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no such file"), "{err}");
    assert!(!env.config().exists());
}

#[test]
fn cleanup_with_nothing_to_do_and_with_a_crashed_vm() {
    let env = Env::new();
    let nothing = env.podvm(&["cleanup"]);
    assert!(nothing.status.success());
    assert!(stdout(&nothing).contains("nothing to clean up"));

    // A crashed runtime's state directory (owner dead) and a running one (owner alive: us).
    let state = env.path("state");
    let stale = state.join("crashed");
    let live = state.join("running");
    fs::create_dir_all(&stale).unwrap();
    fs::create_dir_all(&live).unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    fs::write(stale.join("owner.pid"), dead.to_string()).unwrap();
    fs::write(live.join("owner.pid"), std::process::id().to_string()).unwrap();

    let dry = env.podvm(&["cleanup", "--dry-run"]);
    assert!(dry.status.success());
    assert!(
        stdout(&dry).contains("would remove state directory"),
        "{}",
        stdout(&dry)
    );
    assert!(stale.exists());

    let done = env.podvm(&["cleanup"]);
    assert!(done.status.success());
    let out = stdout(&done);
    assert!(
        out.contains(&format!("removed state directory {}", stale.display())),
        "{out}"
    );
    assert!(out.contains("removed 1 state directory"), "{out}");
    assert!(!stale.exists());
    assert!(live.exists(), "a running VM's state directory was removed");
}
