//! The one error type of the image puller: one actionable line per variant, never key material.

use std::path::PathBuf;

/// Everything that can go wrong pulling, decrypting or unpacking an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "invalid image reference {reference:?}: {reason}; use registry/repository[:tag][@sha256:digest]"
    )]
    InvalidReference { reference: String, reason: String },
    #[error(
        "registry request for {what} of {reference} failed: {reason}; check the registry address, credentials and --insecure-http"
    )]
    Registry {
        reference: String,
        what: String,
        reason: String,
    },
    #[error("registry credentials for {registry} could not be obtained: {reason}")]
    Credentials { registry: String, reason: String },
    #[error("{what} of {reference} is not valid: {reason}")]
    BadManifest {
        reference: String,
        what: String,
        reason: String,
    },
    #[error(
        "image index {reference} has no linux/amd64 manifest; push an amd64 image or reference its manifest by digest"
    )]
    NoMatchingPlatform { reference: String },
    #[error(
        "unsupported media type {media_type:?} for {what}; supported are OCI and Docker v2 image types (tar, gzip, zstd, +encrypted)"
    )]
    UnsupportedMediaType { what: String, media_type: String },
    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual}; the registry or the network altered the content, pull again or check the image"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error(
        "truncated blob {digest}: got {got} of {expected} bytes; the registry served an incomplete blob, pull again"
    )]
    Truncated {
        digest: String,
        got: u64,
        expected: u64,
    },
    #[error("blob {digest} is larger than its descriptor says ({expected} bytes); refusing it")]
    Oversize { digest: String, expected: u64 },
    #[error("download of blob {digest} failed after {attempts} attempts: {reason}")]
    Download {
        digest: String,
        attempts: u32,
        reason: String,
    },
    #[error(
        "layer {digest} is encrypted but no key provider was given; pass a decryption key (--decryption-key) or configure the KBS key provider"
    )]
    MissingKeyProvider { digest: String },
    #[error(
        "no key could unwrap layer {digest} ({detail}); the decryption key does not match the image's recipients"
    )]
    NoMatchingKey { digest: String, detail: String },
    #[error("key provider failed for layer {digest}: {reason}")]
    KeyProvider { digest: String, reason: String },
    #[error("encryption metadata of layer {digest} is invalid: {reason}")]
    BadEncryptionMetadata { digest: String, reason: String },
    #[error(
        "HMAC of encrypted layer {digest} does not verify: the ciphertext was modified or the wrong key unwrapped; refusing the layer"
    )]
    HmacMismatch { digest: String },
    #[error("decompression of layer {digest} failed: {reason}")]
    Decompress { digest: String, reason: String },
    #[error(
        "layer {digest}: tar entry {entry:?} escapes the root with '..'; refusing a malicious layer"
    )]
    PathTraversal { digest: String, entry: String },
    #[error(
        "layer {digest}: tar entry {entry:?} would be written through a symlink that leaves the root; refusing a malicious layer"
    )]
    SymlinkEscape { digest: String, entry: String },
    #[error(
        "layer {digest}: tar entry {entry:?} is {size} bytes, over the limit of {limit}; raise UnpackLimits if the image is trusted"
    )]
    EntryTooLarge {
        digest: String,
        entry: String,
        size: u64,
        limit: u64,
    },
    #[error(
        "layer {digest}: unpacked size exceeds the limit of {limit} bytes; raise UnpackLimits if the image is trusted"
    )]
    ImageTooLarge { digest: String, limit: u64 },
    #[error("layer {digest}: tar entry {entry:?}: {reason}")]
    BadEntry {
        digest: String,
        entry: String,
        reason: String,
    },
    #[error("layer {digest}: cannot write {entry:?}: {source}")]
    Unpack {
        digest: String,
        entry: String,
        source: std::io::Error,
    },
    #[error(
        "destination {path} already exists and is not empty; remove it or choose another --dest"
    )]
    DestinationExists { path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a pull task failed: {0}")]
    Task(String),
}

impl ImageError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Crate result type for the image module.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Integrity failures raised inside `Read` adapters; carried through `std::io::Error` and turned
/// back into [`ImageError`] by the layer pipeline.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamIntegrity {
    #[error("HMAC mismatch")]
    Hmac,
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Digest {
        what: &'static str,
        expected: String,
        actual: String,
    },
}

impl StreamIntegrity {
    pub(crate) fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }

    /// The integrity failure inside an io error, if that is what it is.
    pub(crate) fn from_io(e: &std::io::Error) -> Option<&StreamIntegrity> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<StreamIntegrity>())
    }
}
