//! `podvm kbs get-resource` (host-runtime/src/cli/kbs.rs, compiled here against a live KBS).

mod common;

#[allow(dead_code)]
#[path = "../../host-runtime/src/cli/kbs.rs"]
mod kbs;

use clap::Parser;
use common::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    kbs: kbs::KbsArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_resource_with_emulated_snp() {
    let d = tempfile::tempdir().expect("tmp");
    let s = start(config(&d.path().join("state"))).await;
    let url = s.url(false);
    assert_eq!(upload(&url, "default/key/1", SECRET).await.status(), 200);
    let init = d.path().join("init.toml");
    std::fs::write(&init, INIT_DATA).expect("write");
    let out = d.path().join("secret");
    let m = hex::encode(MEASUREMENT);
    let dir = psp_dir().to_str().expect("utf8").to_string();
    let args = |measurement: &str| {
        Cli::parse_from([
            "podvm-kbs-get",
            "get-resource",
            "--url",
            &url,
            "--tee",
            "snp-emulated",
            "--emulated-dir",
            &dir,
            "--measurement",
            measurement,
            "--init-data",
            init.to_str().expect("utf8"),
            "--retries",
            "0",
            "-o",
            out.to_str().expect("utf8"),
            "kbs:///default/key/1",
        ])
        .kbs
    };
    kbs::run(args(&m)).await.expect("get-resource");
    assert_eq!(std::fs::read(&out).expect("read"), SECRET);
    let e = kbs::run(args(&hex::encode(OTHER_MEASUREMENT)))
        .await
        .expect_err("wrong measurement");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("measurement mismatch (snp_launch_measurement)"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}
