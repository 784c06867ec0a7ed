//! Image pull inside the guest (and on the host, for the CLI and tests):
//! registry → digest check → ocicrypt decrypt → decompress → safe unpack, streaming.
//!
//! - [`pull`]: [`ImagePuller`], manifests (OCI, Docker, index → linux/amd64), concurrent blob
//!   downloads into a per-pod blob store, the layer pipeline, rename-into-place;
//! - [`ocicrypt`]: encrypted layer metadata, JWE key unwrap (RSA-OAEP, and EC keys via
//!   [`ecdh_es`]), AES-256-CTR + HMAC-SHA256 reader;
//! - [`keys`]: [`KeyProvider`] (local keys or KBS-backed) and registry [`CredentialSource`]s;
//! - [`unpack`]: tar extraction confined to the root (`openat2(RESOLVE_IN_ROOT)`: symlinks resolve
//!   as if the root were `/`), whiteouts;
//! - [`digest`]: `sha256:` digests and a verifying reader;
//! - [`error`]: [`ImageError`], one actionable line per failure.

pub mod digest;
pub mod ecdh_es;
pub mod error;
pub mod keys;
pub mod ocicrypt;
pub mod pull;
pub mod reference;
pub mod unpack;

pub use digest::Digest;
pub use error::ImageError;
pub use keys::{
    AuthJson, CredentialSource, KbsCredentials, KbsKeyProvider, KeyProvider, KeyProviderError,
    PrivateKeyProvider, RegistryCredentials, ResourceFetcher,
};
pub use pull::{ImagePuller, ProgressEvent, ProgressFn, PullOptions, PulledImage};
pub use reference::pinned_reference;
pub use unpack::{UnpackLimits, UnpackOptions, WhiteoutMode};
