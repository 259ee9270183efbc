//! Connections to the broker, and the one declaration of the shared exchange
//! (its names are in `memberflow_contract::topology`): both services declare
//! it, so neither has to start first.
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind, options::ExchangeDeclareOptions,
    types::FieldTable, uri::AMQPUri,
};
use memberflow_contract::topology::EXCHANGE;

/// How long opening a connection may take; a half-open socket must not park
/// a relay or consumer forever.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The AMQP heartbeat both services ask for, in seconds (`amqp.heartbeat_secs`).
/// RabbitMQ closes a connection after about two silent intervals, and only
/// then gives its unacknowledged messages to another consumer; a paused
/// process's kernel still answers TCP, so without heartbeats the broker's
/// own 60 s default (2–3 minutes in practice) is all that notices.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 5;

/// Where a service meets the broker: the keys of `[<service>.amqp]` that
/// every service has, flattened into its own `AmqpSettings`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct BrokerSettings {
    /// A secret because it carries the broker password.
    pub url: secrecy::SecretString,
    /// The nodes of a RabbitMQ cluster; when set, `url` is not used. From
    /// the environment, comma-separated (`AUTH__AMQP__URLS`).
    #[serde(deserialize_with = "deserialize_urls")]
    pub urls: Vec<secrecy::SecretString>,
    /// The AMQP heartbeat asked for, in seconds (0: the broker's, 60 s by
    /// default). The broker gives a silent (paused, hung) connection's
    /// unacknowledged messages to another consumer after about two
    /// intervals. A `heartbeat` parameter in a URL overrides it.
    pub heartbeat_secs: u16,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: secrecy::SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            urls: Vec::new(),
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
        }
    }
}

impl BrokerSettings {
    /// The broker nodes to connect to.
    pub fn nodes(&self) -> Nodes {
        Nodes::new(&self.url, &self.urls).with_heartbeat(self.heartbeat_secs)
    }
}

/// Opens a connection whose name shows up in the broker's connection list,
/// with the default heartbeat unless the URL sets one.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    connect_with_heartbeat(url, name, DEFAULT_HEARTBEAT_SECS).await
}

/// [`connect`] asking for a heartbeat of `heartbeat_secs` (0: the broker's),
/// unless the URL's own `heartbeat` parameter (`amqp://…/vhost?heartbeat=10`)
/// says otherwise.
pub async fn connect_with_heartbeat(
    url: &str,
    name: &str,
    heartbeat_secs: u16,
) -> lapin::Result<Connection> {
    let uri = with_heartbeat(url, heartbeat_secs).map_err(|e| {
        lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid AMQP URL: {e}"),
        ))
    })?;
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, props))
        .await
        .map_err(|_| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "AMQP connect timed out",
            ))
        })?
}

/// `url` parsed, its `heartbeat` parameter defaulting to `heartbeat_secs`.
fn with_heartbeat(url: &str, heartbeat_secs: u16) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    uri.query.heartbeat.get_or_insert(heartbeat_secs);
    Ok(uri)
}

/// The broker nodes a service may use: `amqp.urls` (several nodes of one
/// cluster), else the one-node shorthand `amqp.url`. Each (re)connect starts
/// at the node after the one used last and tries every node once, so a lost
/// node is skipped at once and the load spreads over the others; the
/// caller's backoff (with jitter) paces the rounds.
#[derive(Debug, Clone)]
pub struct Nodes {
    urls: std::sync::Arc<[secrecy::SecretString]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    heartbeat_secs: u16,
}

impl Nodes {
    /// `urls` when not empty, else `url`, with the default heartbeat.
    pub fn new(url: &secrecy::SecretString, urls: &[secrecy::SecretString]) -> Self {
        let urls: Vec<_> = if urls.is_empty() {
            vec![url.clone()]
        } else {
            urls.to_vec()
        };
        Self {
            urls: urls.into(),
            next: Default::default(),
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
        }
    }

    /// Asks for a heartbeat of `secs` (`amqp.heartbeat_secs`) on every
    /// connection whose URL does not set its own.
    pub fn with_heartbeat(mut self, secs: u16) -> Self {
        self.heartbeat_secs = secs;
        self
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// A connection to the first node that answers, starting after the one
    /// used last; the error of the last node tried if none does.
    pub async fn connect(&self, name: &str) -> lapin::Result<Connection> {
        use secrecy::ExposeSecret;
        use std::sync::atomic::Ordering;
        let start = self.next.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.urls.len() {
            let index = (start + i) % self.urls.len();
            let url = self.urls[index].expose_secret();
            match connect_with_heartbeat(url, name, self.heartbeat_secs).await {
                Ok(conn) => {
                    self.next.store(index + 1, Ordering::Relaxed);
                    if self.urls.len() > 1 {
                        tracing::info!(node = %redact_url(url), name, "connected to broker node");
                    }
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::warn!(node = %redact_url(url), error = %e, "broker node unreachable");
                    last = Some(e);
                }
            }
        }
        self.next.store(start + 1, Ordering::Relaxed);
        Err(last.expect("at least one node"))
    }
}

/// Deserializes `amqp.urls` from a list, or from one comma-separated string
/// (how it arrives from the environment: `TASK__AMQP__URLS=amqp://…,amqp://…`).
pub fn deserialize_urls<'de, D>(d: D) -> Result<Vec<secrecy::SecretString>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(crate::list_setting::deserialize_list(d)?
        .into_iter()
        .map(secrecy::SecretString::from)
        .collect())
}

/// `amqp.url` and every `amqp.urls` entry, by key, for the start-up audit.
pub fn audited_urls<'a>(
    url: &'a secrecy::SecretString,
    urls: &'a [secrecy::SecretString],
) -> Vec<(&'static str, &'a secrecy::SecretString)> {
    std::iter::once(("amqp.url", url))
        .chain(urls.iter().map(|u| ("amqp.urls", u)))
        .collect()
}

/// Declares [`EXCHANGE`] (idempotent).
pub async fn declare_exchange(channel: &Channel) -> lapin::Result<()> {
    declare_topic_exchange(channel, EXCHANGE).await
}

/// Declares the durable topic exchange `name` (idempotent): whichever side
/// of an exchange starts first declares it.
pub async fn declare_topic_exchange(channel: &Channel, name: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            name.into(),
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
    fn urls_come_as_a_list_or_comma_separated() {
        use secrecy::ExposeSecret;
        #[derive(serde::Deserialize)]
        struct S {
            #[serde(deserialize_with = "super::deserialize_urls")]
            urls: Vec<secrecy::SecretString>,
        }
        let parse = |value: config::Value| -> Vec<String> {
            let s: S = load(value);
            s.urls
                .iter()
                .map(|u| u.expose_secret().to_owned())
                .collect()
        };
        assert_eq!(parse("a, b,,c".into()), ["a", "b", "c"]);
        assert_eq!(parse("".into()), Vec::<String>::new());
        assert_eq!(parse(vec!["a", "b"].into()), ["a", "b"]);
    }

    /// `{"urls": value}` through the config crate, as settings load it.
    fn load<T: serde::de::DeserializeOwned>(value: config::Value) -> T {
        config::Config::builder()
            .set_override("urls", value)
            .unwrap()
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn the_heartbeat_defaults_to_the_setting_and_the_url_overrides_it() {
        let uri = super::with_heartbeat("amqp://guest:guest@127.0.0.1:5672/%2f", 5).unwrap();
        assert_eq!(uri.query.heartbeat, Some(5));
        let uri =
            super::with_heartbeat("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=30", 5).unwrap();
        assert_eq!(uri.query.heartbeat, Some(30));
        assert!(super::with_heartbeat("not a url", 5).is_err());
    }

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
