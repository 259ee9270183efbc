//! Start-up checks that no known secret runs in production.
//!
//! The repository ships development secrets so that `cargo run -p memberflow`
//! and the tests work at once. Anyone who has read the repository knows them,
//! so in `production` (the default environment) a service refuses to start
//! with them, or with a secret that is missing or short, and names the key.
//! In `development` it starts, with one loud warning.
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The development token signing key (`config/development.toml`, the tests):
/// an Ed25519 private key in PKCS#8 PEM.
pub const DEV_SIGNING_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIOVSUVx4HGcdvzxXuuKP6ZkRcdz8kXh67Rsr+Fgs89hj
-----END PRIVATE KEY-----
";
/// The development service credential.
pub const DEV_SERVICE_TOKEN: &str = "dev-only-service-token";
/// Every secret value that appears in this repository, including the
/// HS256 secret of releases before the switch to Ed25519.
const KNOWN: [&str; 3] = [
    DEV_SIGNING_KEY,
    DEV_SERVICE_TOKEN,
    "dev-only-change-me-0123456789abcdef",
];
/// Shortest secret accepted in production, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// What is wrong with a secret, if anything.
pub fn secret_problem(value: &str) -> Option<&'static str> {
    if value.trim().is_empty() {
        Some("is missing")
    } else if KNOWN.iter().any(|k| same_text(k, value)) {
        Some("is a value published in the memberflow repository")
    } else if value.len() < MIN_SECRET_LEN {
        Some("is shorter than 32 bytes")
    } else {
        None
    }
}

/// Equal but for whitespace: a PEM re-wrapped or re-indented is the same key.
fn same_text(a: &str, b: &str) -> bool {
    let visible = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    visible(a) == visible(b)
}

/// What is wrong with a broker or database URL, if anything: the default
/// `guest:guest` credentials are only acceptable on a loopback host.
pub fn url_problem(url: &str) -> Option<&'static str> {
    let rest = url.split_once("://")?.1;
    let (userinfo, host_part) = rest.split_once('@')?;
    let authority = host_part.split(['/', '?']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (userinfo == "guest:guest" && !loopback)
        .then_some("carries the default guest:guest credentials on a non-loopback host")
}

/// Which rules a service runs under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Repository dev values are accepted, with a warning.
    Development,
    /// Secrets must be real; the default.
    #[default]
    Production,
}

impl Environment {
    /// The name used in files and env vars.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
        }
    }
}

/// Start-up refused, naming every offending key.
#[derive(Debug, thiserror::Error)]
#[error("refusing to start in production: {}", .0.join("; "))]
pub struct Refused(Vec<String>);

/// Collects the checks of one service's settings.
#[derive(Debug)]
pub struct Audit {
    environment: Environment,
    problems: Vec<String>,
}

impl Audit {
    pub fn new(environment: Environment) -> Self {
        Self {
            environment,
            problems: Vec::new(),
        }
    }

    /// Checks the secret at config key `key`.
    pub fn secret(mut self, key: &str, value: &SecretString) -> Self {
        if let Some(p) = secret_problem(value.expose_secret()) {
            self.problems.push(format!("{key} {p}"));
        }
        self
    }

    /// Checks the URL at config key `key`.
    pub fn url(mut self, key: &str, value: &SecretString) -> Self {
        if let Some(p) = url_problem(value.expose_secret()) {
            self.problems.push(format!("{key} {p}"));
        }
        self
    }

    /// Records a problem found elsewhere (a check that needed a
    /// connection), at config key `key`.
    pub fn problem(mut self, key: &str, problem: &str) -> Self {
        self.problems.push(format!("{key} {problem}"));
        self
    }

    /// `Err` in production if anything was found; in development, one
    /// warning listing it.
    pub fn finish(self) -> Result<(), Refused> {
        match (self.environment, self.problems.is_empty()) {
            (_, true) => Ok(()),
            (Environment::Production, false) => Err(Refused(self.problems)),
            (Environment::Development, false) => {
                tracing::warn!(
                    problems = %self.problems.join("; "),
                    "DEVELOPMENT MODE: running with secrets or roles that would be refused in production"
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_must_be_present_long_and_unpublished() {
        assert_eq!(secret_problem(""), Some("is missing"));
        assert!(secret_problem(DEV_SIGNING_KEY).is_some());
        assert!(
            secret_problem(&format!("  {}", DEV_SIGNING_KEY.replace('\n', "\r\n  "))).is_some()
        );
        assert!(secret_problem(DEV_SERVICE_TOKEN).is_some());
        assert_eq!(secret_problem("short"), Some("is shorter than 32 bytes"));
        assert_eq!(secret_problem(&"k".repeat(32)), None);
    }

    #[test]
    fn guest_credentials_only_on_loopback() {
        assert!(url_problem("amqp://guest:guest@127.0.0.1:5672/%2f").is_none());
        assert!(url_problem("amqp://guest:guest@localhost/%2f").is_none());
        assert!(url_problem("amqp://guest:guest@[::1]:5672/%2f").is_none());
        assert!(url_problem("amqp://guest:guest@rabbit.internal:5672/%2f").is_some());
        assert!(url_problem("amqps://app:s3cret@rabbit.internal/%2f").is_none());
        assert!(url_problem("postgres://postgres@db/auth").is_none());
    }

    #[test]
    fn a_problem_found_after_connecting_is_refused_in_production_only() {
        let superuser = |environment| {
            Audit::new(environment)
                .problem("task.database.url", "connects as the PostgreSQL superuser")
                .finish()
        };
        let err = superuser(Environment::Production).unwrap_err();
        assert!(
            err.to_string().contains("task.database.url connects as"),
            "{err}"
        );
        assert!(superuser(Environment::Development).is_ok());
    }

    #[test]
    fn production_refuses_and_names_the_key_development_warns() {
        let known = SecretString::from(DEV_SIGNING_KEY);
        let err = Audit::new(Environment::Production)
            .secret("auth.token.signing_key", &known)
            .finish()
            .unwrap_err();
        assert!(err.to_string().contains("auth.token.signing_key"), "{err}");
        assert!(
            Audit::new(Environment::Development)
                .secret("auth.token.signing_key", &known)
                .finish()
                .is_ok()
        );
    }
}
