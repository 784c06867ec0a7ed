//! Image references pinned by digest, the form pod policies compare.

/// `reference` pinned to `digest`: `name@<digest>`, replacing a tag or an earlier digest.
/// `127.0.0.1:5000/app:v1` + `sha256:ab…` → `127.0.0.1:5000/app@sha256:ab…` (the registry's
/// port is not mistaken for a tag).
pub fn pinned_reference(reference: &str, digest: &str) -> String {
    let name = match reference.split_once('@') {
        Some((name, _)) => name,
        None => {
            // A tag is a ':' after the last '/'.
            let slash = reference.rfind('/').map(|i| i + 1).unwrap_or(0);
            match reference[slash..].rfind(':') {
                Some(colon) => &reference[..slash + colon],
                None => reference,
            }
        }
    };
    format!("{name}@{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests_are_replaced_and_ports_kept() {
        let d = "sha256:00";
        assert_eq!(
            pinned_reference("127.0.0.1:5000/app:v1", d),
            "127.0.0.1:5000/app@sha256:00"
        );
        assert_eq!(
            pinned_reference("127.0.0.1:5000/app", d),
            "127.0.0.1:5000/app@sha256:00"
        );
        assert_eq!(
            pinned_reference("quay.io/a/b@sha256:ff", d),
            "quay.io/a/b@sha256:00"
        );
        assert_eq!(pinned_reference("busybox:1.36", d), "busybox@sha256:00");
        assert_eq!(pinned_reference("busybox", d), "busybox@sha256:00");
    }
}
