//! How Redis errors map onto [`BrokerError`]: connection errors (retry after a reconnect)
//! versus command errors, and the TLS and hang-up causes behind a failed connect.

use errand_core::BrokerError;
use redis::RedisError;

pub(crate) fn cmd_err(e: RedisError) -> BrokerError {
    // A refused login while reconnecting (the password was rotated, the user disabled) is a
    // connection error: callers back off and retry, and work resumes when the login works.
    // So is a server that is up but not serving yet: LOADING (restarted, reading its
    // append-only file), TRYAGAIN, MASTERDOWN (a replica that lost its master). Found by the
    // R1 soak: acks refused with LOADING after a restart were given up, not retried.
    // READONLY means the server was a master and is now a replica (a failover): the broker
    // reconnects ([`crate::RedisBroker`]'s `fail`) to reach the new master, and callers retry.
    // OOM (maxmemory reached under noeviction) passes as memory frees up: retried too.
    let not_ready = matches!(
        e.kind(),
        redis::ErrorKind::Server(
            redis::ServerErrorKind::BusyLoading
                | redis::ServerErrorKind::TryAgain
                | redis::ServerErrorKind::MasterDown
                | redis::ServerErrorKind::ReadOnly
        )
    ) || e.code() == Some("OOM");
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::AuthenticationFailed
        || not_ready
    {
        BrokerError::Connection(Box::new(e))
    } else {
        BrokerError::Command(Box::new(e))
    }
}

/// The I/O error behind `e`, if any (redis-rs keeps it behind an `Arc`).
pub(crate) fn io_error(e: &RedisError) -> Option<&std::io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        if let Some(shared) =
            err.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
            && let Some(io) = shared.downcast_ref::<std::io::Error>()
        {
            return Some(io);
        }
        source = err.source();
    }
    None
}

/// The TLS failure (a rustls error: the certificate, the handshake) behind `e`, if any.
pub(crate) fn tls_error(e: &RedisError) -> Option<&rustls::Error> {
    io_error(e)?.get_ref()?.downcast_ref()
}

/// Whether `e` is the server closing a fresh connection without a reply (what a TLS-only port
/// does to a plaintext client).
pub(crate) fn hung_up_at_once(e: &RedisError) -> bool {
    io_error(e).map_or_else(
        || e.is_connection_dropped(),
        |io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            )
        },
    )
}
