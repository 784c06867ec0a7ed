//! `podvm-kbs`: run podvm's KBS, make admin keys and tokens, upload resources, benchmark.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use podvm_kbs_mock::{Config, jwt, policy, store, tls_acceptor};

#[derive(Parser)]
#[command(
    name = "podvm-kbs",
    version,
    about = "podvm's Key Broker Service (KBS protocol 0.4.0, trustee-compatible)"
)]
struct Cli {
    /// Log level or tracing filter.
    #[arg(long, global = true, env = "PODVM_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the KBS.
    Serve(ServeArgs),
    /// Make an Ed25519 admin key pair: PREFIX.key (PKCS#8 PEM, 0600) and PREFIX.pub (SPKI PEM).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print an admin token (EdDSA JWT) signed with the admin private key.
    AdminToken {
        #[arg(long)]
        key: PathBuf,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 7200)]
        ttl: u64,
    },
    /// Upload a resource through the admin API.
    PutResource {
        /// KBS URL (http://host:port or https://...).
        #[arg(long)]
        url: String,
        /// Admin private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// CA certificate (PEM) for an HTTPS KBS.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// <repository>/<type>/<tag> or kbs:///<repository>/<type>/<tag>.
        path: String,
        /// File holding the resource bytes.
        file: PathBuf,
    },
    /// Attestations per second (full RCAR, emulated SNP) at several client concurrencies.
    Bench {
        /// Client concurrencies.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        clients: Vec<usize>,
        /// Seconds per concurrency level.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 = any free port; the bound URL is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// TLS certificate chain (PEM); with --tls-key serves HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// State directory: resources, policies, reference values, token key (0700).
    #[arg(long)]
    state_dir: PathBuf,
    /// Ed25519 admin public key (SPKI PEM); without it the admin API is disabled.
    #[arg(long)]
    admin_pubkey: Option<PathBuf>,
    /// Reference values (a `podvm measure` export); repeatable.
    #[arg(long)]
    reference_values: Vec<PathBuf>,
    /// Directory of AMD ARK/ASK/VCEK and Intel root certificates; repeatable.
    #[arg(long)]
    cert_dir: Vec<PathBuf>,
    /// TDX collateral directory (tcbInfo, QE identity, CRLs); repeatable.
    #[arg(long)]
    collateral_dir: Vec<PathBuf>,
    /// podvm's emulated SNP ARK (`<emulated dir>/ark.pem`); used only with --allow-emulated.
    #[arg(long)]
    emulated_ark: Option<PathBuf>,
    /// Accept emulated SNP evidence (and release resources to it under the default policy).
    #[arg(long)]
    allow_emulated: bool,
    /// Accept CoCo's `sample` TEE (unsigned; only the report_data binding is checked).
    #[arg(long)]
    allow_sample: bool,
    /// Accept debuggable guests.
    #[arg(long)]
    allow_debug: bool,
    /// Minimum SNP REPORTED_TCB, e.g. bl=3,tee=0,snp=8,ucode=115.
    #[arg(long, value_parser = policy::parse_tcb)]
    min_snp_tcb: Option<podvm_attestation::snp::TcbVersion>,
    /// Verify TDX quotes without collateral (TCB status "Unknown").
    #[arg(long)]
    no_tdx_collateral: bool,
    /// Rego attestation policy (data.policy.allow over the claims).
    #[arg(long)]
    attestation_policy: Option<PathBuf>,
    /// Rego resource policy (data.policy.allow; input = claims, data.resource-path).
    #[arg(long)]
    resource_policy: Option<PathBuf>,
    /// Session (challenge) lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    session_ttl: u64,
    /// Attestation token lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    token_ttl: u64,
    /// Largest JSON request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Largest resource upload in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_resource: usize,
}

fn read(p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("read {}", p.display()))
}

fn read_text(p: &PathBuf) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))
}

async fn serve(a: ServeArgs) -> Result<()> {
    let mut cfg = Config::new(&a.state_dir);
    for d in &a.cert_dir {
        cfg.anchors
            .add_cert_dir(d)
            .with_context(|| format!("--cert-dir {}", d.display()))?;
    }
    for d in &a.collateral_dir {
        cfg.anchors
            .add_collateral_dir(d)
            .with_context(|| format!("--collateral-dir {}", d.display()))?;
    }
    if let Some(p) = &a.emulated_ark {
        cfg.anchors
            .add_cert_bytes(&read(p)?, &p.display().to_string())
            .with_context(|| format!("--emulated-ark {}", p.display()))?;
    }
    cfg.allow_emulated = a.allow_emulated;
    cfg.allow_sample = a.allow_sample;
    cfg.allow_debug = a.allow_debug;
    cfg.min_snp_tcb = a.min_snp_tcb;
    cfg.require_tdx_collateral = !a.no_tdx_collateral;
    for p in &a.reference_values {
        cfg.reference_values.push(
            podvm_measured_boot::refvals::ReferenceValues::load(p)
                .with_context(|| format!("--reference-values {}", p.display()))?,
        );
    }
    cfg.attestation_policy = a.attestation_policy.as_ref().map(read_text).transpose()?;
    cfg.resource_policy = a.resource_policy.as_ref().map(read_text).transpose()?;
    if let Some(p) = &a.admin_pubkey {
        let pem = read_text(p)?;
        cfg.admin_key = Some(
            ed25519_dalek::VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "--admin-pubkey {}: not an Ed25519 SPKI PEM: {e}",
                    p.display()
                )
            })?,
        );
    }
    cfg.session_ttl = Duration::from_secs(a.session_ttl);
    cfg.token_ttl = Duration::from_secs(a.token_ttl);
    cfg.max_body = a.max_body;
    cfg.max_resource = a.max_resource;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(&read(c)?, &read(k)?)?),
        _ => None,
    };
    let https = tls.is_some();
    let kbs = podvm_kbs_mock::Kbs::new(cfg)?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("bind {}", a.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "podvm-kbs listening on {}://{addr}",
        if https { "https" } else { "http" }
    );
    podvm_kbs_mock::serve(listener, kbs, tls).await
}

fn signing_key(p: &PathBuf) -> Result<ed25519_dalek::SigningKey> {
    ed25519_dalek::SigningKey::from_pkcs8_pem(&read_text(p)?).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an Ed25519 PKCS#8 PEM private key: {e}",
            p.display()
        )
    })
}

fn admin_token(key: &ed25519_dalek::SigningKey, ttl: u64) -> String {
    let now = jwt::now_unix();
    jwt::sign(
        key,
        &serde_json::json!({"iat": now, "exp": now + ttl as i64}),
    )
}

async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Serve(a) => serve(a).await,
        Command::Keygen { out } => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
            let k = ed25519_dalek::SigningKey::from_bytes(&seed);
            let priv_pem = k
                .to_pkcs8_pem(Default::default())
                .map_err(|e| anyhow::anyhow!("encode private key: {e}"))?;
            let pub_pem = k
                .verifying_key()
                .to_public_key_pem(Default::default())
                .map_err(|e| anyhow::anyhow!("encode public key: {e}"))?;
            let kp = out.with_extension("key");
            let pp = out.with_extension("pub");
            store::atomic_write(&kp, priv_pem.as_bytes())?;
            std::fs::write(&pp, pub_pem.as_bytes())
                .with_context(|| format!("write {}", pp.display()))?;
            println!("{}\n{}", kp.display(), pp.display());
            Ok(())
        }
        Command::AdminToken { key, ttl } => {
            println!("{}", admin_token(&signing_key(&key)?, ttl));
            Ok(())
        }
        Command::PutResource {
            url,
            key,
            ca_cert,
            path,
            file,
        } => {
            let p = path.strip_prefix("kbs:///").unwrap_or(&path);
            let uri = podvm_attestation::kbs_client::ResourceUri::from_path(p)?;
            let data = read(&file)?;
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut b = reqwest::Client::builder();
            if let Some(ca) = &ca_cert {
                b = b.add_root_certificate(
                    reqwest::Certificate::from_pem(&read(ca)?).context("--ca-cert")?,
                );
            }
            let resp = b
                .build()?
                .post(format!(
                    "{}/kbs/v0/resource/{}",
                    url.trim_end_matches('/'),
                    uri.path()
                ))
                .bearer_auth(admin_token(&signing_key(&key)?, 300))
                .body(data)
                .send()
                .await
                .with_context(|| format!("POST to {url}"))?;
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                anyhow::bail!("KBS answered {status}: {body}");
            }
            println!("uploaded {uri}");
            Ok(())
        }
        Command::Bench { clients, seconds } => {
            let dir = tempfile_dir()?;
            let r = podvm_kbs_mock::bench::run(&dir, &clients, Duration::from_secs(seconds)).await;
            let _ = std::fs::remove_dir_all(&dir);
            for b in r? {
                println!(
                    "clients={:<3} attestations={:<6} seconds={:.2} attestations/s={:.1}",
                    b.clients,
                    b.attestations,
                    b.seconds,
                    b.per_second()
                );
            }
            Ok(())
        }
    }
}

fn tempfile_dir() -> Result<PathBuf> {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    let d = std::env::temp_dir().join(format!("podvm-kbs-bench-{}", hex::encode(r)));
    store::mkdir_private(&d)?;
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("podvm-kbs: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podvm-kbs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
