//! Content digests (`sha256:<hex>`) and a `Read` adapter that verifies one at end of stream.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::error::StreamIntegrity;

const SHA256_PREFIX: &str = "sha256:";
const SHA256_HEX_LEN: usize = 64;

/// A validated `sha256:<64 lowercase hex>` digest. Other algorithms are refused: every registry
/// and every image tool in use produces sha256.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parse and validate a digest string.
    pub fn parse(s: &str) -> Result<Self, String> {
        let hex = s
            .strip_prefix(SHA256_PREFIX)
            .ok_or_else(|| format!("digest {s:?} is not sha256"))?;
        if hex.len() != SHA256_HEX_LEN
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!("digest {s:?} is not 64 lowercase hex digits"));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(format!(
            "{SHA256_PREFIX}{}",
            hex::encode(Sha256::digest(data))
        ))
    }

    pub(crate) fn from_hasher(h: Sha256) -> Self {
        Digest(format!("{SHA256_PREFIX}{}", hex::encode(h.finalize())))
    }

    /// The 64 hex digits, usable as a file name.
    pub fn hex(&self) -> &str {
        &self.0[SHA256_PREFIX.len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hashes everything read through it; at end of stream compares with the expected digest and
/// fails the read with [`StreamIntegrity::Digest`] on mismatch.
pub(crate) struct VerifyingReader<R> {
    inner: R,
    hasher: Option<Sha256>,
    expected: Digest,
    what: &'static str,
    bytes: u64,
}

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(inner: R, expected: Digest, what: &'static str) -> Self {
        VerifyingReader {
            inner,
            hasher: Some(Sha256::new()),
            expected,
            what,
            bytes: 0,
        }
    }

    /// Read to the end of the stream (verifying), discarding the rest.
    pub(crate) fn finish(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())?;
        Ok(self.bytes)
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            hasher.update(&buf[..n]);
            self.bytes += n as u64;
            return Ok(n);
        }
        let actual = Digest::from_hasher(self.hasher.take().expect("hasher present"));
        if actual != self.expected {
            return Err(StreamIntegrity::Digest {
                what: self.what,
                expected: self.expected.to_string(),
                actual: actual.to_string(),
            }
            .into_io());
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_bad_digests() {
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse("md5:00").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        let d = Digest::of(b"hello");
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
    }

    #[test]
    fn verifying_reader_detects_mismatch() {
        let good = Digest::of(b"payload");
        let mut r = VerifyingReader::new(&b"payload"[..], good, "test");
        assert_eq!(r.finish().unwrap(), 7);
        let mut r = VerifyingReader::new(&b"payloaX"[..], Digest::of(b"payload"), "test");
        let err = r.finish().unwrap_err();
        assert!(matches!(
            StreamIntegrity::from_io(&err),
            Some(StreamIntegrity::Digest { .. })
        ));
    }
}
