//! Job ids and process identities in Sidekiq's formats.

/// A new job id: 12 random bytes as 24 lowercase hex characters, as Sidekiq makes them.
pub fn new_jid() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

/// The hostname Sidekiq shows: `DYNO` when set (and not empty), else the OS hostname
/// (`localhost` when the OS gives none).
pub fn hostname() -> String {
    std::env::var("DYNO")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let host = gethostname::gethostname();
            let host = host.to_string_lossy();
            let host = host.trim();
            if host.is_empty() {
                "localhost".into()
            } else {
                host.to_string()
            }
        })
}

/// A process identity `<hostname>:<pid>:<12 hex nonce>`, the key of its heartbeat hash.
pub fn new_identity() -> String {
    format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        hex::encode(rand::random::<[u8; 6]>())
    )
}

/// A random UUID (version 4) in its usual text form, for ActiveJob's `job_id`.
pub fn new_uuid() -> String {
    let mut b = rand::random::<[u8; 16]>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jids_are_24_hex_and_distinct() {
        let a = new_jid();
        assert_eq!(a.len(), 24);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, new_jid());
    }

    #[test]
    fn hostname_is_dyno_or_the_os_hostname() {
        let host = hostname();
        assert!(!host.is_empty());
        match std::env::var("DYNO") {
            Ok(dyno) if !dyno.is_empty() => assert_eq!(host, dyno),
            _ => {
                if let Ok(os) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                    assert_eq!(host, os.trim(), "the same name the kernel reports");
                }
            }
        }
        assert!(new_identity().starts_with(&format!("{host}:")));
    }

    #[test]
    fn identity_has_three_parts() {
        let id = new_identity();
        let parts: Vec<_> = id.rsplitn(3, ':').collect();
        assert_eq!(parts[0].len(), 12);
        assert_eq!(parts[1], std::process::id().to_string());
    }

    #[test]
    fn uuid_shape() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
