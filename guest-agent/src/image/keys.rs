//! Where layer keys and registry credentials come from.
//!
//! The puller asks a [`KeyProvider`] to turn a [`WrappedKey`] into the layer's private options.
//! In the guest the provider is [`KbsKeyProvider`] over the KBS client (anything implementing
//! [`ResourceFetcher`], i.e. "get this KBS resource after attestation"); on the host and in tests
//! it is [`PrivateKeyProvider`] with local key files.

use std::path::Path;

use async_trait::async_trait;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::ocicrypt::{JwePrivateKey, WrappedKey, jwe_decrypt};

/// Why a key provider could not unwrap a key. `NotMine` lets the puller try the next recipient.
#[derive(Debug, thiserror::Error)]
pub enum KeyProviderError {
    #[error("{0}")]
    NotMine(String),
    #[error("{0}")]
    Failed(String),
}

/// Unwraps one recipient's wrapped key into the private options JSON (zeroized on drop).
#[async_trait]
pub trait KeyProvider: Send + Sync {
    async fn unwrap_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<Vec<u8>>, KeyProviderError>;
}

/// Fetches a KBS resource (`kbs:///<repo>/<type>/<tag>`) after attestation: the KBS client's job.
#[async_trait]
pub trait ResourceFetcher: Send + Sync {
    async fn get_resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, String>;
}

/// Local private keys (PEM/DER files, as for `skopeo copy --decryption-key`). JWE only.
pub struct PrivateKeyProvider {
    keys: Vec<JwePrivateKey>,
}

impl PrivateKeyProvider {
    pub fn new(keys: Vec<JwePrivateKey>) -> Self {
        PrivateKeyProvider { keys }
    }

    /// Read private keys from files.
    pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self, KeyProviderError> {
        let mut keys = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let data = Zeroizing::new(std::fs::read(p).map_err(|e| {
                KeyProviderError::Failed(format!("cannot read decryption key {}: {e}", p.display()))
            })?);
            keys.push(JwePrivateKey::from_bytes(&data).map_err(|e| {
                KeyProviderError::Failed(format!("decryption key {}: {e}", p.display()))
            })?);
        }
        Ok(PrivateKeyProvider { keys })
    }
}

#[async_trait]
impl KeyProvider for PrivateKeyProvider {
    async fn unwrap_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<Vec<u8>>, KeyProviderError> {
        match wrapped {
            WrappedKey::Jwe(jwe) => jwe_decrypt(jwe, &self.keys).map_err(KeyProviderError::NotMine),
            WrappedKey::AttestationAgent(p) => Err(KeyProviderError::NotMine(format!(
                "layer key {} must be released by the KBS; a local key file cannot unwrap it",
                p.kid
            ))),
        }
    }
}

/// The guest's provider: attestation-agent packets are unwrapped with the key-encryption key
/// fetched from the KBS at the packet's `kid`; JWE recipients with private keys fetched from the
/// KBS at `jwe_key_uris` (fetched once, lazily).
pub struct KbsKeyProvider<F> {
    fetcher: F,
    jwe_key_uris: Vec<String>,
    jwe_keys: tokio::sync::OnceCell<Vec<JwePrivateKey>>,
}

impl<F: ResourceFetcher> KbsKeyProvider<F> {
    pub fn new(fetcher: F, jwe_key_uris: Vec<String>) -> Self {
        KbsKeyProvider {
            fetcher,
            jwe_key_uris,
            jwe_keys: tokio::sync::OnceCell::new(),
        }
    }
}

#[async_trait]
impl<F: ResourceFetcher> KeyProvider for KbsKeyProvider<F> {
    async fn unwrap_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<Vec<u8>>, KeyProviderError> {
        match wrapped {
            WrappedKey::AttestationAgent(packet) => {
                let kek = self.fetcher.get_resource(&packet.kid).await.map_err(|e| {
                    KeyProviderError::Failed(format!("KBS resource {}: {e}", packet.kid))
                })?;
                packet
                    .unwrap_with_kek(&kek)
                    .map_err(KeyProviderError::NotMine)
            }
            WrappedKey::Jwe(jwe) => {
                if self.jwe_key_uris.is_empty() {
                    return Err(KeyProviderError::NotMine(
                        "no KBS resource configured for JWE private keys".into(),
                    ));
                }
                let keys = self
                    .jwe_keys
                    .get_or_try_init(|| async {
                        let mut keys = Vec::new();
                        for uri in &self.jwe_key_uris {
                            let data = self.fetcher.get_resource(uri).await.map_err(|e| {
                                KeyProviderError::Failed(format!("KBS resource {uri}: {e}"))
                            })?;
                            keys.push(JwePrivateKey::from_bytes(&data).map_err(|e| {
                                KeyProviderError::Failed(format!("KBS resource {uri}: {e}"))
                            })?);
                        }
                        Ok::<_, KeyProviderError>(keys)
                    })
                    .await?;
                jwe_decrypt(jwe, keys).map_err(KeyProviderError::NotMine)
            }
        }
    }
}

/// Registry credentials (user, password), never logged.
#[derive(Clone)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Supplies credentials for a registry host, or `None` for anonymous access.
#[async_trait]
pub trait CredentialSource: Send + Sync {
    async fn credentials(&self, registry: &str) -> Result<Option<RegistryCredentials>, String>;
}

/// A docker `auth.json` (`{"auths":{"<host>":{"auth":"base64(user:pass)"}}}`), e.g. a KBS
/// resource or `~/.docker/config.json`.
pub struct AuthJson {
    json: Zeroizing<Vec<u8>>,
}

impl AuthJson {
    pub fn new(json: Zeroizing<Vec<u8>>) -> Self {
        AuthJson { json }
    }

    /// Credentials for `registry`, if the file has them.
    pub fn lookup(&self, registry: &str) -> Result<Option<RegistryCredentials>, String> {
        let v: serde_json::Value = serde_json::from_slice(&self.json)
            .map_err(|_| "auth.json is not valid JSON".to_string())?;
        let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
            return Err("auth.json has no \"auths\" object".into());
        };
        let entry = auths.iter().find(|(host, _)| {
            let h = host
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            h.trim_end_matches('/') == registry || h.split('/').next() == Some(registry)
        });
        let Some((_, entry)) = entry else {
            return Ok(None);
        };
        if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
            let decoded = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(auth)
                    .map_err(|_| format!("auth.json entry for {registry} is not base64"))?,
            );
            let s = std::str::from_utf8(&decoded)
                .map_err(|_| format!("auth.json entry for {registry} is not UTF-8"))?;
            let (user, pass) = s
                .split_once(':')
                .ok_or_else(|| format!("auth.json entry for {registry} is not user:password"))?;
            return Ok(Some(RegistryCredentials {
                username: user.to_string(),
                password: Zeroizing::new(pass.to_string()),
            }));
        }
        match (
            entry.get("username").and_then(|u| u.as_str()),
            entry.get("password").and_then(|p| p.as_str()),
        ) {
            (Some(u), Some(p)) => Ok(Some(RegistryCredentials {
                username: u.to_string(),
                password: Zeroizing::new(p.to_string()),
            })),
            _ => Err(format!(
                "auth.json entry for {registry} has neither auth nor username/password"
            )),
        }
    }
}

#[async_trait]
impl CredentialSource for AuthJson {
    async fn credentials(&self, registry: &str) -> Result<Option<RegistryCredentials>, String> {
        self.lookup(registry)
    }
}

/// Credentials from an `auth.json` kept as a KBS resource, fetched on first use.
pub struct KbsCredentials<F> {
    fetcher: F,
    uri: String,
    cache: tokio::sync::OnceCell<AuthJson>,
}

impl<F: ResourceFetcher> KbsCredentials<F> {
    pub fn new(fetcher: F, uri: impl Into<String>) -> Self {
        KbsCredentials {
            fetcher,
            uri: uri.into(),
            cache: tokio::sync::OnceCell::new(),
        }
    }
}

#[async_trait]
impl<F: ResourceFetcher> CredentialSource for KbsCredentials<F> {
    async fn credentials(&self, registry: &str) -> Result<Option<RegistryCredentials>, String> {
        let auth = self
            .cache
            .get_or_try_init(|| async {
                self.fetcher
                    .get_resource(&self.uri)
                    .await
                    .map(AuthJson::new)
                    .map_err(|e| format!("KBS resource {}: {e}", self.uri))
            })
            .await?;
        auth.lookup(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_json_lookup() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let a = AuthJson::new(Zeroizing::new(
            format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}}}}}}"#).into_bytes(),
        ));
        let c = a.lookup("127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(&*c.password, "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(a.lookup("other:1").unwrap().is_none());
    }
}
