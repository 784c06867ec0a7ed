//! `podvm policy generate <manifest>`: the agent policy, initdata and annotation of a pod.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use podvm_policy::initdata::{ANNOTATION, InitData};
use podvm_policy::{Algorithm, GenerateOptions, generate};

#[derive(Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// From a Pod (or Deployment) manifest: the Rego policy (images pinned by digest, commands,
    /// env, mounts), the initdata TOML that measures it, and the pod annotation value.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct GenerateArgs {
    /// The Kubernetes manifest (YAML; the first Pod or Deployment is used).
    manifest: PathBuf,
    /// Allow exec into the pod's containers (and writing to a process's stdin).
    #[arg(long)]
    allow_exec: bool,
    /// Allow the host to read container output (kubectl logs).
    #[arg(long)]
    allow_logs: bool,
    /// The initdata digest algorithm.
    #[arg(long, default_value = "sha384", value_parser = ["sha256", "sha384", "sha512"])]
    algorithm: String,
    /// Extra initdata `[data]` entries, e.g. `--data aa.toml=./aa.toml --data cdh.toml=./cdh.toml`.
    #[arg(long = "data", value_name = "KEY=FILE")]
    data: Vec<String>,
    /// Write policy.rego, initdata.toml, initdata.annotation and initdata.img (the initdata block
    /// device) into this directory; without it, only the annotation is printed.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: PolicyArgs) -> Result<()> {
    let PolicyCommand::Generate(args) = args.command;
    let manifest = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("read {}", args.manifest.display()))?;
    let mut extra_data = Vec::new();
    for entry in &args.data {
        let Some((key, file)) = entry.split_once('=') else {
            bail!("--data takes KEY=FILE, got {entry:?}");
        };
        if key == podvm_policy::initdata::POLICY_KEY {
            bail!("--data {key}: the policy is generated from the manifest");
        }
        let value =
            std::fs::read_to_string(file).with_context(|| format!("read {file} (--data {key})"))?;
        extra_data.push((key.to_string(), value));
    }
    let options = GenerateOptions {
        allow_exec: args.allow_exec,
        allow_logs: args.allow_logs,
        algorithm: Some(args.algorithm.parse::<Algorithm>()?),
        extra_data,
    };
    let generated =
        generate(&manifest, &options).with_context(|| format!("{}", args.manifest.display()))?;
    let initdata = InitData::parse(&generated.initdata_toml)?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))
        };
        write("policy.rego", generated.rego.as_bytes())?;
        write("initdata.toml", generated.initdata_toml.as_bytes())?;
        write(
            "initdata.annotation",
            format!("{}\n", generated.annotation).as_bytes(),
        )?;
        write("initdata.img", &initdata.to_device_image())?;
        eprintln!(
            "wrote policy.rego, initdata.toml, initdata.annotation, initdata.img to {}",
            dir.display()
        );
    }
    eprintln!(
        "initdata {} digest: {}",
        initdata.algorithm().as_str(),
        hex::encode(initdata.digest())
    );
    eprintln!("SNP HOST_DATA:    {}", hex::encode(initdata.host_data()));
    eprintln!("TDX MRCONFIGID:   {}", hex::encode(initdata.mr_config_id()));
    eprintln!(
        "exec {}, logs {}",
        if args.allow_exec { "allowed" } else { "denied" },
        if args.allow_logs { "allowed" } else { "denied" }
    );
    println!("{ANNOTATION}: {}", generated.annotation);
    Ok(())
}
