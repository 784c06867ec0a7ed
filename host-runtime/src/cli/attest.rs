//! `podvm attest verify <evidence> [--certs DIR] [--collateral DIR] [--allow-emulated]
//! [--at RFC3339] [--json]`: verify SEV-SNP / TDX evidence offline and print the claims, or the
//! single reason it was rejected.

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use clap::{Args, Subcommand};
use podvm_attestation::{Evidence, Expectations, TrustAnchors, verifier::decode_hex};

#[derive(Args, Debug)]
pub struct AttestArgs {
    #[command(subcommand)]
    pub command: AttestCommand,
}

#[derive(Subcommand, Debug)]
pub enum AttestCommand {
    /// Verify evidence (CoCo JSON, raw SNP report or raw TDX quote) without any network access.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Evidence file: `{"attestation_report", "cert_chain"}` (SNP), `{"quote", "cc_eventlog"}`
    /// (TDX), a KBS `tee-evidence` object, a raw 1184-byte SNP report or a raw TDX quote.
    pub evidence: PathBuf,
    /// Certificate directory (*.pem, *.der): AMD ARK/ASK (and VCEKs), the Intel SGX Root CA,
    /// or an emulated-TEE directory.
    #[arg(long, value_name = "DIR")]
    pub certs: Vec<PathBuf>,
    /// TDX collateral directory: tcbInfo and QE identity JSON, PCK and root CRLs.
    #[arg(long, value_name = "DIR")]
    pub collateral: Vec<PathBuf>,
    /// Accept podvm's emulated SNP root (the claims then say `"emulated": true`).
    #[arg(long)]
    pub allow_emulated: bool,
    /// Accept debuggable guests.
    #[arg(long)]
    pub allow_debug: bool,
    /// TDX: accept quotes whose platform has no collateral (TCB status is then unknown).
    #[arg(long)]
    pub no_collateral_required: bool,
    /// Verification time (RFC 3339), e.g. 2023-06-20T00:00:00Z; default now.
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Expected MEASUREMENT (SNP) / MRTD (TDX), hex.
    #[arg(long, value_name = "HEX")]
    pub expect_measurement: Option<String>,
    /// Expected HOST_DATA (SNP) / MRCONFIGID (TDX), hex (zero-padded).
    #[arg(long, value_name = "HEX")]
    pub expect_init_data: Option<String>,
    /// Expected REPORT_DATA, hex (zero-padded to 64 bytes).
    #[arg(long, value_name = "HEX")]
    pub expect_report_data: Option<String>,
    /// Print JSON (`{"verified": true, "claims": {...}}` or `{"verified": false, "reason": ...}`).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: AttestArgs) -> Result<()> {
    let AttestCommand::Verify(a) = args.command;
    let bytes =
        std::fs::read(&a.evidence).with_context(|| format!("read {}", a.evidence.display()))?;

    let mut anchors = TrustAnchors {
        allow_emulated: a.allow_emulated,
        ..Default::default()
    };
    for dir in &a.certs {
        anchors.add_cert_dir(dir)?;
    }
    for dir in &a.collateral {
        anchors.add_collateral_dir(dir)?;
    }
    let at = match &a.at {
        Some(s) => Some(podvm_attestation::tdx::collateral::parse_time(s, "--at")?),
        None => None,
    };
    let exp = Expectations {
        measurement: a
            .expect_measurement
            .as_deref()
            .map(|h| decode_hex("--expect-measurement", h))
            .transpose()?,
        init_data: a
            .expect_init_data
            .as_deref()
            .map(|h| decode_hex("--expect-init-data", h))
            .transpose()?,
        report_data: a
            .expect_report_data
            .as_deref()
            .map(|h| decode_hex("--expect-report-data", h))
            .transpose()?,
        allow_debug: a.allow_debug,
        require_tdx_collateral: !a.no_collateral_required,
        at,
        ..Default::default()
    };

    let result = Evidence::from_any_bytes(&bytes)
        .and_then(|ev| podvm_attestation::verify(&ev, &exp, &anchors));
    let (out, outcome) = match result {
        Ok(claims) => {
            let mut out = String::new();
            if a.json {
                out =
                    serde_json::json!({ "verified": true, "claims": claims.to_json() }).to_string();
            } else {
                let emulated = if claims.emulated {
                    " (EMULATED TEE)"
                } else {
                    ""
                };
                out.push_str(&format!("verified: {:?}{emulated}\n", claims.tee));
                out.push_str(&format!(
                    "measurement: {}\ninit_data: {}\n",
                    claims.measurement, claims.init_data
                ));
                out.push_str(&format!(
                    "report_data: {}\ndebug: {}\n",
                    claims.report_data, claims.debug
                ));
                for (k, v) in &claims.details {
                    out.push_str(&format!(
                        "{k}: {}\n",
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    ));
                }
            }
            (out, Ok(()))
        }
        Err(reason) => {
            let out = if a.json {
                serde_json::json!({ "verified": false, "reason": reason.to_string() }).to_string()
            } else {
                String::new()
            };
            (out, Err(anyhow!("attestation rejected: {reason}")))
        }
    };
    print_out(&out)?;
    outcome
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
fn print_out(s: &str) -> Result<()> {
    use std::io::Write as _;
    if s.is_empty() {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    let r = stdout.write_all(s.as_bytes()).and_then(|()| {
        if s.ends_with('\n') {
            Ok(())
        } else {
            stdout.write_all(b"\n")
        }
    });
    match r.and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("write to stdout"),
        _ => Ok(()),
    }
}
