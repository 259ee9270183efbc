//! The AMQP topology both sides agree on, and connection helpers.
//!
//! auth publishes to [`EXCHANGE`]; task binds its own queue to it. Only the
//! exchange and the routing keys are shared: each service declares what it
//! owns (auth the exchange, task its queues), and both declare the exchange so
//! neither has to start first.
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind, options::ExchangeDeclareOptions,
    types::FieldTable,
};

/// Durable topic exchange carrying member events.
pub const EXCHANGE: &str = "member.events";
/// Routing key of a `auth.v1.MemberChanged` at signup (version 1).
pub const MEMBER_CREATED: &str = "member.created";
/// Routing key of a `auth.v1.MemberChanged` after a profile change.
pub const MEMBER_UPDATED: &str = "member.updated";
/// Routing key of a `auth.v1.MemberSessionsRevoked` (Logout, ChangePassword).
pub const MEMBER_SESSIONS_REVOKED: &str = "member.sessions_revoked";
/// Content type of every event body.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// AMQP `delivery_mode` for persistent messages.
pub const PERSISTENT: u8 = 2;

/// How long opening a connection may take; a half-open socket must not park
/// a relay or consumer forever.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a connection whose name shows up in the broker's connection list.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props))
        .await
        .map_err(|_| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "AMQP connect timed out",
            ))
        })?
}

/// Declares [`EXCHANGE`] (idempotent).
pub async fn declare_exchange(channel: &Channel) -> lapin::Result<()> {
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Removes the password from an AMQP or PostgreSQL URL, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            super::redact_url("postgres://127.0.0.1/auth"),
            "postgres://127.0.0.1/auth"
        );
    }
}
