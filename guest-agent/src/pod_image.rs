//! The pod's image pulls inside the guest: settings from the measured initdata (`cdh.toml`, as
//! Confidential Containers' CDH reads it), attestation to the KBS for keys and registry
//! credentials, then [`ImagePuller`] (verify, decrypt, unpack).
//!
//! `cdh.toml` keys podvm reads:
//! ```toml
//! [kbc]
//! name = "cc_kbc"
//! url = "http://127.0.0.1:8080"        # the KBS
//! kbs_cert = "-----BEGIN CERTIFICATE-----..."   # optional CA for an HTTPS KBS
//! [image]
//! authenticated_registry_credentials_uri = "kbs:///default/credential/registry"   # optional
//! # podvm: KBS resources holding the JWE private keys of `skopeo --encryption-key jwe:` images
//! jwe_key_uris = ["kbs:///default/image-key/jwe"]
//! # podvm: registries spoken to over plain HTTP (loopback test registries)
//! insecure_registries = ["127.0.0.1:5000"]
//! max_concurrent_layer_downloads_per_image = 3
//! ```
//! Because the initdata is measured (HOST_DATA / MRCONFIGID), the host cannot redirect the KBS or
//! downgrade a registry to HTTP without the KBS noticing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use podvm_attestation::attester::Attester;
use podvm_attestation::kbs_client::{
    AttesterSource, EvidenceSource, KbsClient, KbsClientConfig, SampleEvidence, WithLaunchHint,
};
use podvm_policy::InitData;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::egress::Egress;
use crate::image::{
    ImageError, ImagePuller, KbsCredentials, KbsKeyProvider, PullOptions, PulledImage,
    ResourceFetcher,
};

/// The initdata entry holding the settings.
pub const CDH_TOML: &str = "cdh.toml";

/// Image and KBS settings of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSettings {
    pub kbs_url: Option<String>,
    pub kbs_cert: Option<String>,
    pub credentials_uri: Option<String>,
    pub jwe_key_uris: Vec<String>,
    pub insecure_registries: Vec<String>,
    pub concurrency: Option<usize>,
}

#[derive(Deserialize, Default)]
struct CdhToml {
    #[serde(default)]
    kbc: Option<Kbc>,
    #[serde(default)]
    image: Option<ImageSection>,
}

#[derive(Deserialize)]
struct Kbc {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    kbs_cert: Option<String>,
}

#[derive(Deserialize, Default)]
struct ImageSection {
    #[serde(default)]
    authenticated_registry_credentials_uri: Option<String>,
    #[serde(default)]
    jwe_key_uris: Vec<String>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    #[serde(default)]
    max_concurrent_layer_downloads_per_image: Option<usize>,
}

/// Why a pull failed: one line each.
#[derive(Debug, thiserror::Error)]
pub enum PodImageError {
    #[error("initdata {CDH_TOML} is not valid TOML: {0}")]
    Settings(String),
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    #[error("KBS client for {url}: {reason}")]
    Kbs { url: String, reason: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    Store(String),
}

impl ImageSettings {
    /// Reads `cdh.toml` of the initdata (none: all defaults).
    pub fn from_initdata(initdata: Option<&InitData>) -> Result<Self, PodImageError> {
        let Some(text) = initdata.and_then(|i| i.data().get(CDH_TOML)) else {
            return Ok(ImageSettings::default());
        };
        let cdh: CdhToml =
            toml::from_str(text).map_err(|e| PodImageError::Settings(e.message().to_string()))?;
        let kbc = cdh.kbc;
        let image = cdh.image.unwrap_or_default();
        Ok(ImageSettings {
            kbs_url: kbc.as_ref().and_then(|k| k.url.clone()),
            kbs_cert: kbc.and_then(|k| k.kbs_cert),
            credentials_uri: image.authenticated_registry_credentials_uri,
            jwe_key_uris: image.jwe_key_uris,
            insecure_registries: image.insecure_registries,
            concurrency: image.max_concurrent_layer_downloads_per_image,
        })
    }
}

/// `host` and `port` of `http(s)://host[:port][/...]`.
pub fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split('/').next()?;
    Some(split_host_port(authority, default_port))
}

/// `host` and `port` of a registry (`host[:port]`).
pub fn split_host_port(authority: &str, default_port: u16) -> (String, u16) {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse() {
            Ok(port) => (h.to_string(), port),
            Err(_) => (authority.to_string(), default_port),
        },
        _ => (authority.to_string(), default_port),
    }
}

/// How the agent attests to the KBS.
pub type AttesterFactory = Arc<dyn Fn() -> Option<Box<dyn Attester>> + Send + Sync>;

/// The pod's image service: one KBS session and one blob store for all its containers.
pub struct PodImages {
    settings: ImageSettings,
    init_data: Option<String>,
    attester: AttesterFactory,
    egress: Option<Arc<Egress>>,
    store: PathBuf,
    kbs: tokio::sync::OnceCell<Arc<KbsClient>>,
}

struct KbsFetcher(Arc<KbsClient>);

#[async_trait]
impl ResourceFetcher for KbsFetcher {
    async fn get_resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        self.0
            .get_resource_uri(uri)
            .await
            .map(Zeroizing::new)
            .map_err(|e| e.to_string())
    }
}

impl PodImages {
    /// `egress`: relay loopback destinations over vsock (in a VM); `None` connects directly.
    pub fn new(
        settings: ImageSettings,
        initdata: Option<&InitData>,
        attester: AttesterFactory,
        egress: Option<Arc<Egress>>,
        store: impl Into<PathBuf>,
    ) -> Self {
        PodImages {
            settings,
            init_data: initdata.map(|i| i.toml().to_string()),
            attester,
            egress,
            store: store.into(),
            kbs: tokio::sync::OnceCell::new(),
        }
    }

    pub fn settings(&self) -> &ImageSettings {
        &self.settings
    }

    /// Before the first TLS client: the guest's CA bundle (written once, on demand, so a pod
    /// that never pulls does not pay for it at boot).
    fn ensure_ca_bundle() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if let Err(e) = crate::init::install_ca_bundle(Path::new(crate::init::CA_BUNDLE)) {
                tracing::warn!("{e:#}; HTTPS to the KBS and registries will fail");
            }
        });
    }

    async fn reach(&self, host: &str, port: u16) -> Result<(), PodImageError> {
        Self::ensure_ca_bundle();
        if let Some(egress) = &self.egress {
            egress.ensure(host, port).await?;
        }
        Ok(())
    }

    /// The KBS client (attests on first use), if the pod has a KBS.
    async fn kbs(&self) -> Result<Option<Arc<KbsClient>>, PodImageError> {
        let Some(url) = self.settings.kbs_url.clone() else {
            return Ok(None);
        };
        let client = self
            .kbs
            .get_or_try_init(|| async {
                let kbs_err = |reason: String| PodImageError::Kbs {
                    url: url.clone(),
                    reason,
                };
                let (host, port) = url_host_port(&url)
                    .ok_or_else(|| kbs_err("not an http(s)://host[:port] URL".into()))?;
                self.reach(&host, port).await?;
                let mut cfg = KbsClientConfig::new(url.trim_end_matches('/'));
                cfg.init_data = self.init_data.clone();
                cfg.ca_cert_pem = self.settings.kbs_cert.clone().map(String::into_bytes);
                let source: Arc<dyn EvidenceSource> = match (self.attester)() {
                    Some(a) => Arc::new(WithLaunchHint {
                        inner: Box::new(AttesterSource(a)),
                        hint: launch_hint(),
                    }),
                    None => Arc::new(SampleEvidence::default()),
                };
                let client = KbsClient::new(cfg, source).map_err(|e| kbs_err(e.to_string()))?;
                Ok::<_, PodImageError>(Arc::new(client))
            })
            .await?;
        Ok(Some(client.clone()))
    }

    /// Attests to the pod's KBS now (no-op without one), so that a refusal surfaces before
    /// anything is pulled.
    pub async fn attest(&self) -> Result<(), PodImageError> {
        if let Some(kbs) = self.kbs().await? {
            kbs.attest().await.map_err(|e| PodImageError::Kbs {
                url: self.settings.kbs_url.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Attests if that has not happened yet; returns how long it took (zero if it had).
    pub async fn ensure_attested(&self) -> Result<std::time::Duration, PodImageError> {
        let started = std::time::Instant::now();
        let Some(kbs) = self.kbs().await? else {
            return Ok(std::time::Duration::ZERO);
        };
        if kbs.token().await.is_some() {
            return Ok(std::time::Duration::ZERO);
        }
        self.attest().await?;
        Ok(started.elapsed())
    }

    /// Pulls `image` for `container_id` into `<store>/rootfs/<container_id>`.
    pub async fn pull(
        &self,
        image: &str,
        container_id: &str,
    ) -> Result<PulledImage, PodImageError> {
        if container_id.is_empty()
            || !container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || container_id.starts_with('.')
        {
            return Err(PodImageError::Store(format!(
                "container id {container_id:?} must be non-empty letters, digits, '-', '_' or '.'"
            )));
        }
        let registry = image.split('/').next().unwrap_or_default();
        let insecure = self
            .settings
            .insecure_registries
            .iter()
            .any(|r| r == registry);
        if image.contains('/')
            && (registry.contains('.') || registry.contains(':') || registry == "localhost")
        {
            let (host, port) = split_host_port(registry, if insecure { 80 } else { 443 });
            self.reach(&host, port).await?;
        }
        let opts = PullOptions {
            insecure_http: insecure,
            concurrency: self.settings.concurrency.unwrap_or(3),
            ..Default::default()
        };
        Self::ensure_ca_bundle();
        let mut puller = ImagePuller::new(self.store.join("store"), opts)?;
        if let Some(kbs) = self.kbs().await? {
            let fetcher = KbsFetcher(kbs.clone());
            puller = puller.with_key_provider(Arc::new(KbsKeyProvider::new(
                fetcher,
                self.settings.jwe_key_uris.clone(),
            )));
            if let Some(uri) = &self.settings.credentials_uri {
                puller =
                    puller.with_credentials(Arc::new(KbsCredentials::new(KbsFetcher(kbs), uri)));
            }
        }
        let dest = rootfs_dir(&self.store, container_id);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| PodImageError::Store(format!("create {}: {e}", parent.display())))?;
        }
        Ok(puller.pull(image, &dest).await?)
    }
}

/// What this guest sees of its own launch: the kernel command line and the online vCPUs.
fn launch_hint() -> serde_json::Value {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut hint = serde_json::json!({ "cmdline": cmdline.trim_end_matches('\n') });
    if let Ok(n) = crate::guest_info::online_vcpus(Path::new("/")) {
        hint["vcpus"] = serde_json::json!(n);
    }
    hint
}

/// Where the rootfs of `container_id` is unpacked.
pub fn rootfs_dir(store: &Path, container_id: &str) -> PathBuf {
    store.join("rootfs").join(container_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_cdh_toml() {
        let initdata = InitData::build(
            podvm_policy::initdata::Algorithm::Sha256,
            &[(
                CDH_TOML.to_string(),
                r#"
[kbc]
name = "cc_kbc"
url = "http://127.0.0.1:8080"
[image]
jwe_key_uris = ["kbs:///default/image-key/jwe"]
insecure_registries = ["127.0.0.1:5000"]
"#
                .to_string(),
            )],
        )
        .unwrap();
        let s = ImageSettings::from_initdata(Some(&initdata)).unwrap();
        assert_eq!(s.kbs_url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(s.jwe_key_uris, ["kbs:///default/image-key/jwe"]);
        assert_eq!(s.insecure_registries, ["127.0.0.1:5000"]);
        assert_eq!(
            ImageSettings::from_initdata(None).unwrap(),
            ImageSettings::default()
        );
    }

    #[test]
    fn hosts_and_ports_are_split() {
        assert_eq!(
            url_host_port("http://127.0.0.1:8080"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(
            url_host_port("https://kbs.example/x"),
            Some(("kbs.example".into(), 443))
        );
        assert_eq!(url_host_port("ftp://x"), None);
        assert_eq!(
            split_host_port("127.0.0.1:5000", 443),
            ("127.0.0.1".into(), 5000)
        );
        assert_eq!(split_host_port("quay.io", 443), ("quay.io".into(), 443));
    }
}
