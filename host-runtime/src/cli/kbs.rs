//! `podvm kbs get-resource`: fetch a secret from a KBS (podvm's or trustee's, protocol 0.4.0)
//! through the RCAR handshake with this machine's TEE evidence, the emulated SNP PSP, or CoCo's
//! `sample` TEE.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use podvm_attestation::attester::{self, AttesterPaths};
use podvm_attestation::emulated::{EmulatedPsp, ReportRequest};
use podvm_attestation::kbs_client::protocol::{HOST_DATA_LEN, init_data_field};
use podvm_attestation::kbs_client::{
    AttesterSource, EmulatedSnpAttester, EvidenceSource, KbsClient, KbsClientConfig,
    SampleEvidence, TeeKeyAlg,
};

#[derive(clap::Args)]
pub struct KbsArgs {
    #[command(subcommand)]
    command: KbsCommand,
}

#[derive(clap::Subcommand)]
enum KbsCommand {
    /// Attest to a KBS and print (or save) a resource: kbs:///<repository>/<type>/<tag>.
    GetResource(GetResourceArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TeeChoice {
    /// Detect SNP or TDX hardware (never falls back to emulation).
    Auto,
    Snp,
    Tdx,
    /// podvm's emulated SNP PSP (needs --emulated-dir; the KBS must allow emulated evidence).
    SnpEmulated,
    /// CoCo's unsigned sample TEE (the KBS must be told to accept it).
    Sample,
}

#[derive(clap::Args)]
struct GetResourceArgs {
    /// KBS URL, e.g. http://127.0.0.1:8080 or https://kbs.example:8080.
    #[arg(long, env = "PODVM_KBS_URL")]
    url: String,
    /// Resource URI: kbs:///<repository>/<type>/<tag>.
    uri: String,
    /// Evidence source.
    #[arg(long, value_enum, default_value = "auto")]
    tee: TeeChoice,
    /// Emulated PSP directory (--tee snp-emulated); created if missing.
    #[arg(long)]
    emulated_dir: Option<PathBuf>,
    /// MEASUREMENT the emulated PSP reports (96 hex digits; --tee snp-emulated).
    #[arg(long)]
    measurement: Option<String>,
    /// Init-data TOML sent to the KBS; with --tee snp-emulated its digest becomes HOST_DATA.
    #[arg(long)]
    init_data: Option<PathBuf>,
    /// CA certificate (PEM) for an HTTPS KBS; default: the system roots.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// TEE key type: ec (ECDH-ES+A256KW, default) or rsa (RSA-OAEP-256).
    #[arg(long, default_value = "ec")]
    key_alg: String,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Retries after transport errors or 5xx answers (exponential backoff).
    #[arg(long, default_value_t = 4)]
    retries: u32,
    /// Write the resource here (0600) instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn source(a: &GetResourceArgs, init_data: Option<&str>) -> Result<Arc<dyn EvidenceSource>> {
    let paths = AttesterPaths::default();
    Ok(match a.tee {
        TeeChoice::Auto => Arc::new(AttesterSource(
            attester::attester(&paths).context("--tee auto")?,
        )),
        TeeChoice::Snp => Arc::new(AttesterSource::new(attester::SnpAttester::new(paths))),
        TeeChoice::Tdx => Arc::new(AttesterSource::new(attester::TdxAttester::new(paths))),
        TeeChoice::Sample => Arc::new(SampleEvidence::default()),
        TeeChoice::SnpEmulated => {
            let Some(dir) = &a.emulated_dir else {
                bail!("--tee snp-emulated needs --emulated-dir DIR");
            };
            let psp = EmulatedPsp::open_or_create(dir)
                .with_context(|| format!("emulated PSP {}", dir.display()))?;
            let mut template = ReportRequest::default();
            if let Some(m) = &a.measurement {
                let b = hex::decode(m.trim().trim_start_matches("0x"))
                    .context("--measurement is not hex")?;
                template.measurement = b.try_into().map_err(|_| {
                    anyhow::anyhow!("--measurement must be 48 bytes (96 hex digits)")
                })?;
            }
            if let Some(body) = init_data {
                let d = init_data_field(body, HOST_DATA_LEN).context("--init-data")?;
                template.host_data.copy_from_slice(&d);
            }
            Arc::new(AttesterSource::new(EmulatedSnpAttester { psp, template }))
        }
    })
}

pub async fn run(args: KbsArgs) -> Result<()> {
    let KbsCommand::GetResource(a) = args.command;
    let init_data = match &a.init_data {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?)
        }
        None => None,
    };
    let mut cfg = KbsClientConfig::new(&a.url);
    cfg.request_timeout = Duration::from_secs(a.timeout);
    cfg.retries = a.retries;
    cfg.key_alg = a.key_alg.parse::<TeeKeyAlg>()?;
    cfg.init_data = init_data.clone();
    if let Some(p) = &a.ca_cert {
        cfg.ca_cert_pem = Some(std::fs::read(p).with_context(|| format!("read {}", p.display()))?);
    }
    let client = KbsClient::new(cfg, source(&a, init_data.as_deref())?)?;
    let secret = client
        .get_resource_uri(&a.uri)
        .await
        .with_context(|| format!("get {} from {}", a.uri, a.url))?;
    match &a.output {
        Some(p) => {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("create {}", p.display()))?;
            f.write_all(&secret)
                .with_context(|| format!("write {}", p.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&secret).context("write to stdout")?;
            out.flush().context("write to stdout")?;
        }
    }
    Ok(())
}
