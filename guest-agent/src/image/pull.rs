//! The pull pipeline: resolve the manifest, unwrap layer keys, download blobs concurrently into
//! the blob store (digest-verified while streaming), then decrypt, decompress and unpack each
//! layer in order into a temporary directory that is renamed into place only when every
//! digest, HMAC and diff_id has verified.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::digest::{Digest, VerifyingReader};
use super::error::{ImageError, Result, StreamIntegrity};
use super::keys::{CredentialSource, KeyProvider, KeyProviderError};
use super::ocicrypt::{self, PrivateOptions, PublicOptions, WrappedKey};
use super::unpack::{self, UnpackOptions};

const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPTED_MANIFESTS: &[&str] = &[
    MEDIA_OCI_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_LIST,
];
/// Largest image config accepted (they are a few KiB).
const MAX_CONFIG_SIZE: u64 = 4 << 20;
/// Read buffer of the layer pipeline.
const PIPE_BUFFER: usize = 256 << 10;
/// Write buffer of a blob download.
const DOWNLOAD_BUFFER: usize = 1 << 20;
/// Progress events are emitted at most every this many bytes per layer.
const PROGRESS_STEP: u64 = 4 << 20;

/// Progress of a pull, for progress bars and `--json` event streams.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProgressEvent {
    Resolved {
        reference: String,
        manifest_digest: String,
        layers: usize,
        total_size: u64,
    },
    LayerDownloading {
        index: usize,
        digest: String,
        size: u64,
    },
    LayerProgress {
        index: usize,
        digest: String,
        downloaded: u64,
        size: u64,
    },
    LayerDownloaded {
        index: usize,
        digest: String,
        cached: bool,
    },
    LayerUnpacked {
        index: usize,
        digest: String,
        encrypted: bool,
    },
    Done {
        rootfs: String,
        manifest_digest: String,
    },
}

/// Receives progress events (called from async and blocking contexts; keep it quick).
pub type ProgressFn = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Plain HTTP to the registry (loopback test registries).
    pub insecure_http: bool,
    /// Concurrent layer downloads.
    pub concurrency: usize,
    /// Attempts per blob download; each restarts the blob from byte 0.
    pub download_attempts: u32,
    pub unpack: UnpackOptions,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure_http: false,
            concurrency: 3,
            download_attempts: 3,
            unpack: UnpackOptions::default(),
        }
    }
}

/// A pulled, verified, unpacked image.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub manifest_digest: Digest,
    /// The image config JSON (digest-verified).
    pub config: Vec<u8>,
    /// Layer diff_ids, base first.
    pub diff_ids: Vec<Digest>,
    pub rootfs: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compression_of(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Everything the layer pipeline needs to know about one layer.
struct LayerPlan {
    index: usize,
    digest: Digest,
    size: u64,
    media_type: String,
    compression: Compression,
    diff_id: Digest,
    encryption: Option<(PublicOptions, PrivateOptions)>,
}

struct Inner {
    client: Client,
    store: PathBuf,
    opts: PullOptions,
    keys: Option<Arc<dyn KeyProvider>>,
    credentials: Option<Arc<dyn CredentialSource>>,
    progress: Option<ProgressFn>,
}

/// Pulls images into a rootfs directory, sharing downloaded blobs through a store directory
/// (one per pod: two containers of a pod share their layers).
#[derive(Clone)]
pub struct ImagePuller {
    inner: Arc<Inner>,
}

impl ImagePuller {
    /// A puller whose blob store is `store` (created if missing, 0700).
    pub fn new(store: impl Into<PathBuf>, opts: PullOptions) -> Result<Self> {
        // reqwest is built without a rustls provider: use ring (pure Rust + asm, static-friendly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = store.into();
        let blobs = store.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)
            .map_err(|e| ImageError::io("create blob store", &blobs, e))?;
        let config = ClientConfig {
            protocol: if opts.insecure_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            max_concurrent_download: opts.concurrency.max(1),
            connect_timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        Ok(ImagePuller {
            inner: Arc::new(Inner {
                client: Client::new(config),
                store,
                opts,
                keys: None,
                credentials: None,
                progress: None,
            }),
        })
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner)
            .expect("builder methods are called before the puller is shared")
    }

    /// Decrypt encrypted layers with this provider (local key files, or the KBS).
    pub fn with_key_provider(mut self, keys: Arc<dyn KeyProvider>) -> Self {
        self.inner_mut().keys = Some(keys);
        self
    }

    /// Registry credentials (anonymous when absent or when the source has none for the host).
    pub fn with_credentials(mut self, creds: Arc<dyn CredentialSource>) -> Self {
        self.inner_mut().credentials = Some(creds);
        self
    }

    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.inner_mut().progress = Some(progress);
        self
    }

    /// Path of a verified blob in the store.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.store.join("blobs/sha256").join(digest.hex())
    }

    /// Resolves `reference` to `name@<manifest digest>` (for linux/amd64 of an index), the form
    /// a pod policy pins, without downloading layers.
    pub async fn resolve(&self, reference: &str) -> Result<String> {
        let image: Reference = reference.parse().map_err(|e: oci_client::ParseError| {
            ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: e.to_string(),
            }
        })?;
        let auth = self.inner.auth(&image).await?;
        let (digest, _) = self.inner.resolve_manifest(&image, &auth).await?;
        Ok(super::pinned_reference(reference, digest.as_str()))
    }

    /// Pull `reference` and unpack it, flattened, into `dest` (which must not exist or be an
    /// empty directory). On error nothing is left at `dest`.
    pub async fn pull(&self, reference: &str, dest: &Path) -> Result<PulledImage> {
        let inner = &self.inner;
        let image: Reference = reference.parse().map_err(|e: oci_client::ParseError| {
            ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: e.to_string(),
            }
        })?;
        let auth = inner.auth(&image).await?;
        let (manifest_digest, manifest) = inner.resolve_manifest(&image, &auth).await?;
        let image_pinned = image.clone_with_digest(manifest_digest.to_string());
        let config_desc = manifest
            .config
            .ok_or_else(|| bad_manifest(&image, "manifest", "no config descriptor"))?;
        let layers = manifest.layers.unwrap_or_default();
        let config = inner.fetch_config(&image_pinned, &config_desc).await?;
        let parsed: ImageConfig = serde_json::from_slice(&config).map_err(|e| {
            bad_manifest(&image, "image config", &format!("not an image config: {e}"))
        })?;
        if parsed.rootfs.diff_ids.len() != layers.len() {
            return Err(bad_manifest(
                &image,
                "image config",
                &format!(
                    "{} diff_ids for {} layers",
                    parsed.rootfs.diff_ids.len(),
                    layers.len()
                ),
            ));
        }
        let diff_ids = parsed
            .rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d).map_err(|e| bad_manifest(&image, "image config", &e)))
            .collect::<Result<Vec<_>>>()?;

        // Plan every layer, unwrapping keys first: a missing or wrong key fails before any download.
        let mut plans = Vec::with_capacity(layers.len());
        for (index, (desc, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
            plans.push(
                inner
                    .plan_layer(&image, index, desc, diff_id.clone())
                    .await?,
            );
        }
        inner.emit(&ProgressEvent::Resolved {
            reference: reference.to_string(),
            manifest_digest: manifest_digest.to_string(),
            layers: plans.len(),
            total_size: plans.iter().map(|p| p.size).sum(),
        });

        let tmp = prepare_dest(dest)?;
        let result = self.download_and_unpack(&image_pinned, plans, &tmp).await;
        if let Err(e) = result {
            let _ = unpack::remove_tree(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, dest) {
            let _ = unpack::remove_tree(&tmp);
            return Err(ImageError::io(
                "move unpacked rootfs into place at",
                dest,
                e,
            ));
        }
        inner.emit(&ProgressEvent::Done {
            rootfs: dest.display().to_string(),
            manifest_digest: manifest_digest.to_string(),
        });
        Ok(PulledImage {
            manifest_digest,
            config,
            diff_ids,
            rootfs: dest.to_path_buf(),
        })
    }

    async fn download_and_unpack(
        &self,
        image: &Reference,
        plans: Vec<LayerPlan>,
        root: &Path,
    ) -> Result<()> {
        let sem = Arc::new(tokio::sync::Semaphore::new(
            self.inner.opts.concurrency.max(1),
        ));
        let mut downloads = Vec::with_capacity(plans.len());
        for plan in &plans {
            let inner = self.inner.clone();
            let sem = sem.clone();
            let image = image.clone();
            let (index, digest, size, media_type) = (
                plan.index,
                plan.digest.clone(),
                plan.size,
                plan.media_type.clone(),
            );
            downloads.push(tokio::spawn(async move {
                let _permit = sem
                    .acquire_owned()
                    .await
                    .map_err(|e| ImageError::Task(e.to_string()))?;
                inner
                    .fetch_blob(&image, index, &digest, size, &media_type)
                    .await
            }));
        }
        let abort_all = |downloads: &[tokio::task::JoinHandle<Result<PathBuf>>]| {
            downloads.iter().for_each(|d| d.abort())
        };
        let mut total = 0u64;
        for (i, plan) in plans.into_iter().enumerate() {
            let blob = match (&mut downloads[i]).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    abort_all(&downloads);
                    return Err(e);
                }
                Err(e) => {
                    abort_all(&downloads);
                    return Err(ImageError::Task(e.to_string()));
                }
            };
            let root = root.to_path_buf();
            let opts = self.inner.opts.unpack;
            let (index, digest, encrypted) = (
                plan.index,
                plan.digest.to_string(),
                plan.encryption.is_some(),
            );
            let res =
                tokio::task::spawn_blocking(move || apply_layer(&blob, &plan, &root, opts, total))
                    .await;
            match res {
                Ok(Ok(t)) => total = t,
                Ok(Err(e)) => {
                    abort_all(&downloads);
                    return Err(e);
                }
                Err(e) => {
                    abort_all(&downloads);
                    return Err(ImageError::Task(e.to_string()));
                }
            }
            self.inner.emit(&ProgressEvent::LayerUnpacked {
                index,
                digest,
                encrypted,
            });
        }
        Ok(())
    }
}

fn bad_manifest(image: &Reference, what: &str, reason: &str) -> ImageError {
    ImageError::BadManifest {
        reference: image.whole(),
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

fn registry_err(image: &Reference, what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Registry {
        reference: image.whole(),
        what: what.to_string(),
        reason: e.to_string(),
    }
}

impl Inner {
    fn emit(&self, ev: &ProgressEvent) {
        if let Some(p) = &self.progress {
            p(ev);
        }
    }

    async fn auth(&self, image: &Reference) -> Result<RegistryAuth> {
        let registry = image.resolve_registry().to_string();
        let Some(source) = &self.credentials else {
            return Ok(RegistryAuth::Anonymous);
        };
        match source.credentials(&registry).await {
            Ok(Some(c)) => Ok(RegistryAuth::Basic(
                c.username.clone(),
                c.password.to_string(),
            )),
            Ok(None) => Ok(RegistryAuth::Anonymous),
            Err(reason) => Err(ImageError::Credentials { registry, reason }),
        }
    }

    async fn pull_manifest(
        &self,
        image: &Reference,
        auth: &RegistryAuth,
        expected: Option<&Digest>,
    ) -> Result<(Digest, Manifest)> {
        let (bytes, header_digest) = self
            .client
            .pull_manifest_raw(image, auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| registry_err(image, "manifest", e))?;
        let actual = Digest::of(&bytes);
        let expected = match expected {
            Some(d) => Some(d.clone()),
            None => Digest::parse(&header_digest).ok(),
        };
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest of {}", image.whole()),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad_manifest(image, "manifest", &format!("not JSON: {e}")))?;
        Ok((actual, manifest))
    }

    async fn resolve_manifest(
        &self,
        image: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(Digest, Manifest)> {
        let pinned = match image.digest() {
            Some(d) => Some(
                Digest::parse(d).map_err(|reason| ImageError::InvalidReference {
                    reference: image.whole(),
                    reason,
                })?,
            ),
            None => None,
        };
        let (digest, manifest) = self.pull_manifest(image, auth, pinned.as_ref()).await?;
        let is_index = matches!(
            manifest.media_type.as_deref(),
            Some(MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST)
        ) || (manifest.manifests.is_some() && manifest.layers.is_none());
        if !is_index {
            return Ok((digest, manifest));
        }
        let entry = manifest
            .manifests
            .unwrap_or_default()
            .into_iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                    && (m.media_type.is_empty()
                        || m.media_type == MEDIA_OCI_MANIFEST
                        || m.media_type == MEDIA_DOCKER_MANIFEST)
            })
            .ok_or_else(|| ImageError::NoMatchingPlatform {
                reference: image.whole(),
            })?;
        let child =
            Digest::parse(&entry.digest).map_err(|e| bad_manifest(image, "image index", &e))?;
        let child_ref = image.clone_with_digest(child.to_string());
        let (digest, manifest) = self.pull_manifest(&child_ref, auth, Some(&child)).await?;
        if manifest.manifests.is_some() && manifest.layers.is_none() {
            return Err(bad_manifest(image, "image index", "nested index"));
        }
        Ok((digest, manifest))
    }

    async fn fetch_config(&self, image: &Reference, desc: &Descriptor) -> Result<Vec<u8>> {
        let digest = Digest::parse(&desc.digest)
            .map_err(|e| bad_manifest(image, "config descriptor", &e))?;
        if desc.size > MAX_CONFIG_SIZE {
            return Err(bad_manifest(
                image,
                "config descriptor",
                &format!("config of {} bytes is over {MAX_CONFIG_SIZE}", desc.size),
            ));
        }
        let oci = oci_descriptor(&desc.media_type, &digest, desc.size);
        let mut sized = self
            .client
            .pull_blob_stream(image, &oci)
            .await
            .map_err(|e| registry_err(image, "config", e))?;
        let mut data = Vec::with_capacity(desc.size as usize);
        while let Some(chunk) = sized.stream.next().await {
            let chunk = chunk.map_err(|e| registry_err(image, "config", e))?;
            data.extend_from_slice(&chunk);
            if data.len() as u64 > desc.size {
                return Err(ImageError::Oversize {
                    digest: digest.to_string(),
                    expected: desc.size,
                });
            }
        }
        let actual = Digest::of(&data);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: "image config".into(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(data)
    }

    async fn plan_layer(
        &self,
        image: &Reference,
        index: usize,
        desc: &Descriptor,
        diff_id: Digest,
    ) -> Result<LayerPlan> {
        let digest =
            Digest::parse(&desc.digest).map_err(|e| bad_manifest(image, "layer descriptor", &e))?;
        let enc =
            ocicrypt::encrypted_layer(&desc.media_type, &desc.annotations).map_err(|reason| {
                ImageError::BadEncryptionMetadata {
                    digest: digest.to_string(),
                    reason,
                }
            })?;
        let plain_type = enc
            .as_ref()
            .map(|e| e.plain_media_type.clone())
            .unwrap_or_else(|| desc.media_type.clone());
        let compression =
            compression_of(&plain_type).ok_or_else(|| ImageError::UnsupportedMediaType {
                what: format!("layer {digest}"),
                media_type: desc.media_type.clone(),
            })?;
        let encryption = match enc {
            None => None,
            Some(enc) => {
                let private = self.unwrap_layer_key(&digest, &enc.wrapped_keys).await?;
                Some((enc.public, private))
            }
        };
        Ok(LayerPlan {
            index,
            digest,
            size: desc.size,
            media_type: desc.media_type.clone(),
            compression,
            diff_id,
            encryption,
        })
    }

    async fn unwrap_layer_key(
        &self,
        digest: &Digest,
        wrapped: &[WrappedKey],
    ) -> Result<PrivateOptions> {
        let keys = self
            .keys
            .as_ref()
            .ok_or_else(|| ImageError::MissingKeyProvider {
                digest: digest.to_string(),
            })?;
        let mut details = Vec::new();
        for w in wrapped {
            match keys.unwrap_key(w).await {
                Ok(json) => {
                    return PrivateOptions::parse(&json).map_err(|reason| {
                        ImageError::BadEncryptionMetadata {
                            digest: digest.to_string(),
                            reason,
                        }
                    });
                }
                Err(KeyProviderError::NotMine(d)) => details.push(d),
                Err(KeyProviderError::Failed(reason)) => {
                    return Err(ImageError::KeyProvider {
                        digest: digest.to_string(),
                        reason,
                    });
                }
            }
        }
        details.dedup();
        Err(ImageError::NoMatchingKey {
            digest: digest.to_string(),
            detail: details.join("; "),
        })
    }

    /// The blob in the store, downloading it if needed. Each attempt writes a fresh partial
    /// file that is renamed into the store only after its size and digest verified.
    async fn fetch_blob(
        &self,
        image: &Reference,
        index: usize,
        digest: &Digest,
        size: u64,
        media_type: &str,
    ) -> Result<PathBuf> {
        let dir = self.store.join("blobs/sha256");
        let path = dir.join(digest.hex());
        if tokio::fs::metadata(&path)
            .await
            .is_ok_and(|m| m.len() == size)
        {
            self.emit(&ProgressEvent::LayerDownloaded {
                index,
                digest: digest.to_string(),
                cached: true,
            });
            return Ok(path);
        }
        static PARTIAL_SEQ: AtomicU64 = AtomicU64::new(0);
        self.emit(&ProgressEvent::LayerDownloading {
            index,
            digest: digest.to_string(),
            size,
        });
        let mut last = None;
        for attempt in 1..=self.opts.download_attempts.max(1) {
            let partial = dir.join(format!(
                "{}.partial-{}-{}",
                digest.hex(),
                std::process::id(),
                PARTIAL_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let r = self
                .download_once(image, index, digest, size, media_type, &partial)
                .await;
            match r {
                Ok(()) => {
                    tokio::fs::rename(&partial, &path)
                        .await
                        .map_err(|e| ImageError::io("store blob", &path, e))?;
                    self.emit(&ProgressEvent::LayerDownloaded {
                        index,
                        digest: digest.to_string(),
                        cached: false,
                    });
                    return Ok(path);
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&partial).await;
                    match e {
                        ImageError::DigestMismatch { .. }
                        | ImageError::Oversize { .. }
                        | ImageError::Io { .. } => return Err(e),
                        _ => {
                            tracing::warn!(%digest, attempt, error = %e, "blob download failed, restarting it");
                            last = Some(e);
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt)))
                                .await;
                        }
                    }
                }
            }
        }
        Err(match last {
            Some(e @ ImageError::Truncated { .. }) => e,
            Some(e) => ImageError::Download {
                digest: digest.to_string(),
                attempts: self.opts.download_attempts,
                reason: e.to_string(),
            },
            None => ImageError::Task("no download attempt".into()),
        })
    }

    async fn download_once(
        &self,
        image: &Reference,
        index: usize,
        digest: &Digest,
        size: u64,
        media_type: &str,
        partial: &Path,
    ) -> Result<()> {
        let oci = oci_descriptor(media_type, digest, size);
        let sized = self
            .client
            .pull_blob_stream(image, &oci)
            .await
            .map_err(|e| registry_err(image, &format!("blob {digest}"), e))?;
        if let Some(len) = sized.content_length
            && len > size
        {
            return Err(ImageError::Oversize {
                digest: digest.to_string(),
                expected: size,
            });
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(partial)
            .await
            .map_err(|e| ImageError::io("create partial blob", partial, e))?;
        let mut out = tokio::io::BufWriter::with_capacity(DOWNLOAD_BUFFER, file);
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut next_report = PROGRESS_STEP;
        let mut stream = sized.stream;
        let mut stream_error = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    stream_error = Some(e);
                    break;
                }
            };
            got += chunk.len() as u64;
            if got > size {
                return Err(ImageError::Oversize {
                    digest: digest.to_string(),
                    expected: size,
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| ImageError::io("write partial blob", partial, e))?;
            if got >= next_report {
                next_report = got + PROGRESS_STEP;
                self.emit(&ProgressEvent::LayerProgress {
                    index,
                    digest: digest.to_string(),
                    downloaded: got,
                    size,
                });
            }
        }
        out.flush()
            .await
            .map_err(|e| ImageError::io("write partial blob", partial, e))?;
        if got < size {
            return Err(ImageError::Truncated {
                digest: digest.to_string(),
                got,
                expected: size,
            });
        }
        // Our own hash decides, whatever the client library's verification said.
        let actual = Digest::from_hasher(hasher);
        if &actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("layer blob {digest}"),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if let Some(e) = stream_error {
            return Err(registry_err(image, &format!("blob {digest}"), e));
        }
        self.emit(&ProgressEvent::LayerProgress {
            index,
            digest: digest.to_string(),
            downloaded: got,
            size,
        });
        Ok(())
    }
}

fn oci_descriptor(media_type: &str, digest: &Digest, size: u64) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size: size as i64,
        ..Default::default()
    }
}

/// A fresh temporary directory next to `dest`; `dest` must be absent or an empty directory.
fn prepare_dest(dest: &Path) -> Result<PathBuf> {
    match std::fs::read_dir(dest) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(ImageError::DestinationExists {
                    path: dest.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(ImageError::DestinationExists {
                path: dest.to_path_buf(),
            });
        }
        Err(e) => return Err(ImageError::io("inspect destination", dest, e)),
    }
    let name = dest.file_name().ok_or_else(|| {
        ImageError::io(
            "use destination",
            dest,
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| ImageError::io("create destination parent", &parent, e))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = parent.join(format!(
        ".{}.unpacking-{}-{nanos}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::create_dir(&tmp).map_err(|e| ImageError::io("create temporary rootfs", &tmp, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ImageError::io("chmod temporary rootfs", &tmp, e))?;
    Ok(tmp)
}

/// Map an io error from the pipeline to the integrity failure it carries, if any.
fn integrity_error(e: &std::io::Error, digest: &Digest) -> Option<ImageError> {
    match StreamIntegrity::from_io(e)? {
        StreamIntegrity::Hmac => Some(ImageError::HmacMismatch {
            digest: digest.to_string(),
        }),
        StreamIntegrity::Digest {
            what,
            expected,
            actual,
        } => Some(ImageError::DigestMismatch {
            what: format!("{what} of layer {digest}"),
            expected: expected.clone(),
            actual: actual.clone(),
        }),
    }
}

fn refine(err: ImageError, digest: &Digest) -> ImageError {
    match &err {
        ImageError::Unpack { source, .. } => integrity_error(source, digest).unwrap_or(err),
        _ => err,
    }
}

/// Decrypt (if encrypted), decompress and unpack one stored blob into `root`. Blocking.
fn apply_layer(
    blob: &Path,
    plan: &LayerPlan,
    root: &Path,
    opts: UnpackOptions,
    total: u64,
) -> Result<u64> {
    let file = std::fs::File::open(blob).map_err(|e| ImageError::io("open blob", blob, e))?;
    let file = BufReader::with_capacity(PIPE_BUFFER, file);
    let Some((public, private)) = &plan.encryption else {
        // The blob's digest was verified when it entered the store.
        return decompress_and_unpack(file, plan, root, opts, total);
    };
    let dec = ocicrypt::layer_decryptor(file, public, private).map_err(|reason| {
        ImageError::BadEncryptionMetadata {
            digest: plan.digest.to_string(),
            reason,
        }
    })?;
    let mut plain = VerifyingReader::new(dec, private.digest.clone(), "decrypted blob");
    let result = decompress_and_unpack(&mut plain, plan, root, opts, total);
    // Read what the decompressor left (padding, trailing bytes): the HMAC and the plaintext
    // digest are only known at the end, and a failure there is the root cause of any error above.
    let finished = plain.finish();
    match (result, finished) {
        (_, Err(e)) if StreamIntegrity::from_io(&e).is_some() => {
            Err(integrity_error(&e, &plan.digest).expect("integrity error"))
        }
        (Err(e), _) => Err(refine(e, &plan.digest)),
        (Ok(_), Err(e)) => Err(ImageError::io("read blob", blob, e)),
        (Ok(t), Ok(_)) => Ok(t),
    }
}

fn decompress_and_unpack<R: Read>(
    reader: R,
    plan: &LayerPlan,
    root: &Path,
    opts: UnpackOptions,
    total: u64,
) -> Result<u64> {
    let digest = plan.digest.to_string();
    let decoder: Box<dyn Read + '_> = match plan.compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            PIPE_BUFFER,
            reader,
        ))),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(BufReader::with_capacity(PIPE_BUFFER, reader))
                .map_err(|e| ImageError::Decompress {
                    digest: digest.clone(),
                    reason: e.to_string(),
                })?,
        ),
    };
    let mut tar_stream = VerifyingReader::new(
        decoder,
        plan.diff_id.clone(),
        "uncompressed layer (diff_id)",
    );
    let total = unpack::unpack_layer(TarEofPad::new(&mut tar_stream), root, opts, &digest, total)
        .map_err(|e| refine_decompress(e, plan))?;
    tar_stream
        .finish()
        .map_err(|e| match integrity_error(&e, &plan.digest) {
            Some(i) => i,
            None => ImageError::Decompress {
                digest: digest.clone(),
                reason: e.to_string(),
            },
        })?;
    Ok(total)
}

/// A tar-stream read error in a compressed layer is a decompression failure.
fn refine_decompress(err: ImageError, plan: &LayerPlan) -> ImageError {
    match err {
        ImageError::Unpack { source, entry, .. }
            if entry == "<tar stream>"
                && StreamIntegrity::from_io(&source).is_none()
                && plan.compression != Compression::None =>
        {
            ImageError::Decompress {
                digest: plan.digest.to_string(),
                reason: source.to_string(),
            }
        }
        other => other,
    }
}

/// Tolerates tar streams that stop right after the last entry's data (umoci writes such layers;
/// Go's archive/tar, umoci and containerd accept them): at the end of the underlying stream,
/// which the diff_id check below has already verified, supply the block padding and the two
/// zero end-of-archive blocks the tar parser expects.
struct TarEofPad<R> {
    inner: R,
    read: u64,
    pad_left: Option<u64>,
}

const TAR_BLOCK: u64 = 512;

impl<R: Read> TarEofPad<R> {
    fn new(inner: R) -> Self {
        TarEofPad {
            inner,
            read: 0,
            pad_left: None,
        }
    }
}

impl<R: Read> Read for TarEofPad<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pad_left.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                return Ok(n);
            }
            let partial = (TAR_BLOCK - self.read % TAR_BLOCK) % TAR_BLOCK;
            self.pad_left = Some(partial + 2 * TAR_BLOCK);
        }
        let left = self.pad_left.as_mut().expect("set above");
        let n = (*left).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        *left -= n as u64;
        Ok(n)
    }
}
