//! Services the host offers a running guest over vsock (guest → host connections, which arrive on
//! the hybrid socket's `<uds>_<port>` listeners):
//!
//! - the **emulated SEV-SNP PSP** ([`EMULATED_PSP_PORT`], `--tee snp-emulated` only): it signs
//!   reports whose MEASUREMENT and HOST_DATA the host fixed at launch, exactly as the SNP firmware
//!   does; the guest chooses only REPORT_DATA. The host holds the emulated keys, so this proves
//!   nothing against a malicious host (SECURITY.md); it exists so that the same evidence formats,
//!   verifier and KBS run end to end in CI;
//! - the **egress relay** ([`EGRESS_PORT`]): the guest has no network device yet, so its KBS and
//!   registry connections are relayed to TCP addresses on the host. The relay connects only to the
//!   addresses in its allow-list. It sees only what the guest sends; TLS between the guest and a
//!   registry or KBS stays end to end.
//!
//! Each service runs as a task on the caller's runtime and stops when [`GuestServices`] is dropped.

use std::sync::Arc;

use podvm_attestation::emulated::{EmulatedPsp, ReportRequest};
use podvm_protocols::{EGRESS_MAX_LINE, EGRESS_PORT, EMULATED_PSP_PORT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::VmError;
use crate::vsock::HybridVsock;

/// The longest a guest may take to send its request, before the connection is dropped.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The emulated PSP of one launch: its keys and what the launch fixed.
#[derive(Clone)]
pub struct EmulatedPspService {
    pub psp: Arc<EmulatedPsp>,
    /// MEASUREMENT, HOST_DATA, POLICY ...; REPORT_DATA is the guest's.
    pub template: ReportRequest,
}

/// What a VM's guest services are.
#[derive(Clone, Default)]
pub struct GuestServicesConfig {
    pub emulated_psp: Option<EmulatedPspService>,
    /// `host:port` TCP addresses the guest may reach through the egress relay.
    pub egress: Vec<String>,
}

/// The running services of one VM; dropping this stops them.
#[derive(Default)]
pub struct GuestServices {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for GuestServices {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl GuestServices {
    /// Listens on the VM's hybrid vsock socket for the configured services. Call before the VM
    /// starts (the guest may dial as soon as it runs).
    pub fn start(config: &GuestServicesConfig, vsock: &HybridVsock) -> Result<Self, VmError> {
        let mut tasks = Vec::new();
        if let Some(psp) = &config.emulated_psp {
            let listener = vsock.listen(EMULATED_PSP_PORT)?;
            tasks.push(tokio::spawn(serve_emulated_psp(listener, psp.clone())));
        }
        if !config.egress.is_empty() {
            let listener = vsock.listen(EGRESS_PORT)?;
            tasks.push(tokio::spawn(serve_egress(
                listener,
                Arc::new(config.egress.clone()),
            )));
        }
        Ok(GuestServices { tasks })
    }
}

async fn serve_emulated_psp(listener: UnixListener, service: EmulatedPspService) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let service = service.clone();
        tokio::spawn(async move {
            if let Err(e) = answer_report(stream, &service).await {
                tracing::warn!("emulated PSP: {e}");
            }
        });
    }
}

/// One report request: 64 bytes of REPORT_DATA in, a length-prefixed JSON answer out.
async fn answer_report(
    mut stream: UnixStream,
    service: &EmulatedPspService,
) -> std::io::Result<()> {
    let mut report_data = [0u8; 64];
    tokio::time::timeout(REQUEST_TIMEOUT, stream.read_exact(&mut report_data))
        .await
        .map_err(|_| std::io::Error::other("the guest sent no REPORT_DATA within 10 s"))??;
    let mut req = service.template.clone();
    req.report_data = report_data;
    let psp = service.psp.clone();
    let answer = tokio::task::spawn_blocking(move || psp.evidence(&req))
        .await
        .map_err(std::io::Error::other)?;
    let body = match answer.map(|ev| ev.to_json()) {
        Ok(Ok(json)) => format!("{{\"evidence\":{json}}}"),
        Ok(Err(e)) => {
            serde_json::json!({ "error": format!("encode the evidence: {e}") }).to_string()
        }
        Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
    };
    stream.write_all(&(body.len() as u32).to_be_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

async fn serve_egress(listener: UnixListener, allowed: Arc<Vec<String>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let allowed = allowed.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(stream, &allowed).await {
                tracing::debug!("egress relay: {e}");
            }
        });
    }
}

/// Parses `CONNECT <host>:<port>` (without the newline).
pub fn parse_connect(line: &str) -> Result<&str, String> {
    let target = line
        .strip_prefix("CONNECT ")
        .ok_or_else(|| format!("expected `CONNECT <host>:<port>`, got {line:?}"))?;
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("{target:?} has no :port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{target:?} is not <host>:<port>"));
    }
    Ok(target)
}

async fn relay(stream: UnixStream, allowed: &[String]) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut stream)
            .take(EGRESS_MAX_LINE as u64)
            .read_until(b'\n', &mut line),
    )
    .await
    .map_err(|_| std::io::Error::other("no CONNECT line within 10 s"))??;
    let line = String::from_utf8_lossy(&line[..read])
        .trim_end()
        .to_string();
    let target = match parse_connect(&line) {
        Ok(t) if allowed.iter().any(|a| a == t) => t.to_string(),
        Ok(t) => {
            let reason = format!(
                "{t} is not an address this pod may reach (allowed: {})",
                allowed.join(", ")
            );
            stream
                .get_mut()
                .write_all(format!("ERR {reason}\n").as_bytes())
                .await?;
            return Err(std::io::Error::other(reason));
        }
        Err(reason) => {
            stream
                .get_mut()
                .write_all(format!("ERR {reason}\n").as_bytes())
                .await?;
            return Err(std::io::Error::other(reason));
        }
    };
    let mut upstream = match TcpStream::connect(&target).await {
        Ok(s) => s,
        Err(e) => {
            stream
                .get_mut()
                .write_all(format!("ERR connect {target}: {e}\n").as_bytes())
                .await?;
            return Err(e);
        }
    };
    stream.get_mut().write_all(b"OK\n").await?;
    // Bytes the guest sent after its CONNECT line are in the buffer: forward them first.
    let buffered = stream.buffer().to_vec();
    upstream.write_all(&buffered).await?;
    let mut guest = stream.into_inner();
    tokio::io::copy_bidirectional(&mut guest, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(
            parse_connect("CONNECT 127.0.0.1:5000"),
            Ok("127.0.0.1:5000")
        );
        assert_eq!(parse_connect("CONNECT [::1]:8080"), Ok("[::1]:8080"));
        assert!(parse_connect("GET / HTTP/1.1").is_err());
        assert!(parse_connect("CONNECT 127.0.0.1").is_err());
        assert!(parse_connect("CONNECT 127.0.0.1:99999").is_err());
        assert!(parse_connect("CONNECT :80").is_err());
    }

    #[tokio::test]
    async fn egress_relays_allowed_addresses_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = HybridVsock::new(dir.path().join("vsock.sock"));
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.unwrap();
        });
        let services = GuestServices::start(
            &GuestServicesConfig {
                emulated_psp: None,
                egress: vec![echo_addr.clone()],
            },
            &vsock,
        )
        .unwrap();
        let path = vsock.listener_path(EGRESS_PORT);

        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(format!("CONNECT {echo_addr}\nhello").as_bytes())
            .await
            .unwrap();
        let mut reply = [0u8; 8];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"OK\nhello");

        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"CONNECT 127.0.0.1:1\n").await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(
            reply.starts_with("ERR 127.0.0.1:1 is not an address this pod may reach"),
            "{reply}"
        );
        drop(services);
    }
}
