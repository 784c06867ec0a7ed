//! Generates the agent API from `protos/*.proto` (pure-Rust protobuf parser: no `protoc` needed).
//!
//! The generated files carry inner attributes (`#![allow(..)]`, `//!`), which `include!` cannot take,
//! so they are rewritten without them into `$OUT_DIR/<name>.rs`; `src/lib.rs` includes them.

use std::fs;
use std::path::{Path, PathBuf};

const PROTOS: &[&str] = &[
    "protos/health.proto",
    "protos/oci.proto",
    "protos/agent.proto",
];

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let raw_dir = out_dir.join("raw");
    fs::create_dir_all(&raw_dir).expect("create $OUT_DIR/raw");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    ttrpc_codegen::Codegen::new()
        .out_dir(&raw_dir)
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generate the ttrpc code from protos/*.proto");

    for entry in fs::read_dir(&raw_dir).expect("read $OUT_DIR/raw") {
        let path = entry.expect("read a generated file").path();
        if path.extension().is_some_and(|e| e == "rs") {
            strip_inner_attributes(&path, &out_dir.join(path.file_name().unwrap()));
        }
    }
}

fn strip_inner_attributes(from: &Path, to: &Path) {
    let text = fs::read_to_string(from).expect("read a generated file");
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            !line.starts_with("#![") && !line.starts_with("//!")
        })
        .collect();
    fs::write(to, kept.join("\n")).expect("write a generated file");
}
