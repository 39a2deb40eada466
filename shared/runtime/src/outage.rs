//! Telling a lost connection from every other error: a message whose handler
//! failed because the database or the broker is unreachable is not at fault,
//! so it goes back to its queue without using up an attempt, and the service
//! stops taking work until the dependency is back.

use tokio_postgres::error::SqlState;

use crate::health::Dependency;

/// The dependency an error says is unreachable, if it says so.
pub fn classify(err: &anyhow::Error) -> Option<Dependency> {
    err.chain().find_map(|cause| {
        if let Some(err) = cause.downcast_ref::<tokio_postgres::Error>() {
            return database_unreachable(err).then_some(Dependency::Database);
        }
        if let Some(err) = cause.downcast_ref::<deadpool_postgres::PoolError>() {
            return pool_unreachable(err).then_some(Dependency::Database);
        }
        if let Some(err) = cause.downcast_ref::<lapin::Error>() {
            return broker_unreachable(err).then_some(Dependency::Broker);
        }
        None
    })
}

/// Whether a PostgreSQL error means the server cannot be reached or is not
/// taking connections now; a failed statement is not an outage.
pub fn database_unreachable(err: &tokio_postgres::Error) -> bool {
    match err.code() {
        Some(code) => {
            let state = code.code();
            // Class 08: connection exception; 57P01–03: the server shuts
            // down, crashed or is starting; 53300: too many clients.
            state.starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                ]
                .contains(code)
                // A database closed to connections (ALLOW_CONNECTIONS false).
                || (*code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
                    && err
                        .as_db_error()
                        .is_some_and(|db| db.message().contains("not currently accepting connections")))
        }
        // No SQL state: the socket failed, closed, or timed out.
        None => {
            err.is_closed()
                || std::error::Error::source(err).is_some_and(|source| source.is::<std::io::Error>())
                || err.to_string().contains("timeout")
        }
    }
}

fn pool_unreachable(err: &deadpool_postgres::PoolError) -> bool {
    use deadpool_postgres::PoolError;
    match err {
        PoolError::Backend(err) => database_unreachable(err),
        PoolError::Timeout(_) | PoolError::Closed => true,
        _ => false,
    }
}

/// Whether a broker error means the connection or its channel is gone.
pub fn broker_unreachable(err: &lapin::Error) -> bool {
    use lapin::ErrorKind;
    match err.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::MissingHeartbeatError => true,
        // A connection-level error from the broker (e.g. 320 CONNECTION_FORCED
        // when it shuts down) ends the connection.
        ErrorKind::ProtocolError(_) => err.is_amqp_hard_error(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn an_io_error_of_the_broker_is_an_outage_through_context() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let err = anyhow::Error::new(lapin::Error::from(io)).context("publishing to usersync.pipeline/x");
        assert_eq!(classify(&err), Some(Dependency::Broker));
    }

    #[test]
    fn other_errors_are_not_outages() {
        let err = anyhow::anyhow!("the PBX answered 500");
        assert_eq!(classify(&err), None);
        let parse = serde_json::from_str::<u32>("x").context("decoding");
        assert_eq!(classify(&parse.unwrap_err()), None);
    }

    #[test]
    fn a_pool_timeout_is_a_database_outage() {
        let err = anyhow::Error::new(deadpool_postgres::PoolError::Timeout(
            deadpool::managed::TimeoutType::Create,
        ))
        .context("taking a PostgreSQL connection from the pool");
        assert_eq!(classify(&err), Some(Dependency::Database));
    }
}
