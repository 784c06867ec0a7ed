//! kill -9 of a real `podvm-kbs` process during an admin write leaves the old or the new
//! resource, never a torn file; the restarted server serves it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ed25519_dalek::pkcs8::EncodePublicKey;

struct Kbs {
    child: Child,
    url: String,
}

impl Drop for Kbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_child(state: &Path, pubkey: &Path) -> Kbs {
    let mut child = Command::new(env!("CARGO_BIN_EXE_podvm-kbs"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-resource",
            "134217728",
        ])
        .arg("--state-dir")
        .arg(state)
        .arg("--admin-pubkey")
        .arg(pubkey)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn podvm-kbs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let url = line
        .trim()
        .strip_prefix("podvm-kbs listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Kbs { child, url }
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".podvm-tmp-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_admin_write_leaves_old_or_new() {
    let d = tempfile::tempdir().expect("tmp");
    let state = d.path().join("state");
    let pubkey = d.path().join("admin.pub");
    let pem = admin_key()
        .verifying_key()
        .to_public_key_pem(Default::default())
        .expect("pem");
    std::fs::write(&pubkey, pem).expect("write");
    let file = state.join("resources/default/blob/1");
    let dir = file.parent().expect("dir").to_path_buf();

    let old: Vec<u8> = vec![b'o'; 1 << 20];
    let mut kbs = start_child(&state, &pubkey);
    assert_eq!(upload(&kbs.url, "default/blob/1", &old).await.status(), 200);
    let mut killed_mid_write = 0;
    let mut current = old.clone();
    let rounds = 5u8;
    for round in 0..rounds {
        let new: Vec<u8> = vec![b'A' + round; 48 << 20];
        let url = kbs.url.clone();
        let body = new.clone();
        let up = tokio::spawn(async move {
            let _ = http()
                .post(format!("{url}/kbs/v0/resource/default/blob/1"))
                .bearer_auth(admin_token())
                .body(body)
                .send()
                .await;
        });
        // Kill as soon as the server has started writing its temporary file.
        let deadline = Instant::now() + Duration::from_secs(20);
        while temporaries(&dir).is_empty() && Instant::now() < deadline && !up.is_finished() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let mid = !temporaries(&dir).is_empty();
        // SIGKILL, not a graceful stop.
        unsafe { libc::kill(kbs.child.id() as i32, libc::SIGKILL) };
        let _ = kbs.child.wait();
        let _ = up.await;
        if mid {
            killed_mid_write += 1;
        }
        eprintln!(
            "round {round}: killed {}",
            if mid {
                "mid-write"
            } else {
                "before/after the write"
            }
        );
        let content = std::fs::read(&file).expect("resource file exists");
        assert!(
            content == current || content == new,
            "round {round}: torn file of {} bytes",
            content.len()
        );
        current = content;
        // The restarted server removes the leftovers and keeps serving.
        kbs = start_child(&state, &pubkey);
        assert!(
            temporaries(&dir).is_empty(),
            "temporaries left after restart"
        );
        let h = http()
            .get(format!("{}/healthz", kbs.url))
            .send()
            .await
            .expect("healthz");
        assert_eq!(h.status(), 200);
    }
    // At least one kill hit the window between creating and renaming the temporary.
    assert!(
        killed_mid_write >= 1,
        "no kill landed mid-write in {rounds} rounds"
    );
    let small = b"after-restart".to_vec();
    assert_eq!(
        upload(&kbs.url, "default/blob/1", &small).await.status(),
        200
    );
    assert_eq!(std::fs::read(&file).expect("read"), small);
}
