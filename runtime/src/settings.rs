//! Layered configuration, one set of files for both services:
//!
//! 1. compiled-in defaults (every settings struct is `#[serde(default)]`);
//! 2. `<dir>/base.toml`;
//! 3. `<dir>/<environment>.toml`, where `environment` is `development` or
//!    `production` (the default, so a forgotten setting fails safe);
//! 4. environment variables with the service's prefix and `__` as the
//!    separator: `AUTH__SERVER__ADDR` sets `[auth.server] addr`.
//!
//! Each service reads its own table (`[auth]` or `[task]`) of those files.
//! The folder comes from `--config DIR`, then `MEMBERFLOW_CONFIG`, then the
//! nearest `config/` beside or above the running binary, then the workspace
//! the binary was built from. The current directory is never guessed.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use secrecy::SecretString;
use serde::{Deserialize, de::DeserializeOwned};

pub use crate::secrets::Environment;
use crate::secrets::{Audit, Refused};

/// The env var naming the config folder when no `--config` flag is given.
pub const CONFIG_ENV: &str = "MEMBERFLOW_CONFIG";

/// What a service's settings tell the rules both services share: how they
/// are loaded and how they are audited before start-up.
pub trait ServiceSettings: DeserializeOwned + Sized {
    /// The table in the config files, and the env prefix (`auth`: `AUTH__`).
    const SERVICE: &'static str;
    /// The port when nothing sets `server.addr`.
    const PORT: u16;

    /// What every service has (base settings, database), and what the
    /// start-up audit looks at: every secret and every URL that can carry
    /// credentials, each by its key.
    fn audited(&self) -> Audited<'_>;

    fn base(&self) -> &BaseSettings {
        self.audited().base
    }

    fn database(&self) -> &crate::db::DatabaseSettings {
        self.audited().database
    }

    /// How many units of work may run at once (see `unit::Units`): one per
    /// pool connection. More would queue at the pool, where a wait cannot be
    /// cancelled, and a storm of cancelled calls would queue work ahead of
    /// callers that wait (measured: with four per connection, patient
    /// SignUps beside such a storm ran at a tenth of the rate). Past it,
    /// callers wait in arrival order, where a cancel costs nothing.
    fn unit_places(&self) -> usize {
        self.database().max_connections as usize
    }

    /// Defaults, then the service's table of the config files, then its
    /// environment variables.
    fn load(source: &Source) -> Result<Self, SettingsError> {
        let addr = format!("127.0.0.1:{}", Self::PORT);
        let db = format!("postgres://postgres@127.0.0.1:5432/{}", Self::SERVICE);
        source.load(
            Self::SERVICE,
            &[
                ("server.addr", addr.as_str()),
                ("database.url", db.as_str()),
            ],
        )
    }

    /// Refuses known, missing or short secrets (and default broker
    /// credentials off loopback) in production; warns in development.
    fn audit(&self) -> Result<(), Refused> {
        let key = |k: &str| format!("{}.{k}", Self::SERVICE);
        let audited = self.audited();
        let mut audit = Audit::new(audited.base.environment);
        for (k, secret) in audited.secrets {
            audit = audit.secret(&key(k), secret);
        }
        for (k, url) in audited.urls {
            audit = audit.url(&key(k), url);
        }
        audit.finish()
    }
}

/// A service's base and database settings, and its secrets and
/// credentials-bearing URLs, each by its key below the service's table.
#[derive(Debug)]
pub struct Audited<'a> {
    pub base: &'a BaseSettings,
    pub database: &'a crate::db::DatabaseSettings,
    pub secrets: Vec<(&'static str, &'a SecretString)>,
    pub urls: Vec<(&'static str, &'a SecretString)>,
}

impl<'a> Audited<'a> {
    /// What every service has: its environment, the broker URLs
    /// (`amqp.url`, each of `amqp.urls`) and the database URLs
    /// (`database.url`, `database.direct_url`). Add the service's own
    /// secrets with [`Self::secret`].
    pub fn new(
        base: &'a BaseSettings,
        database: &'a crate::db::DatabaseSettings,
        amqp_url: &'a SecretString,
        amqp_urls: &'a [SecretString],
    ) -> Self {
        let mut urls = crate::amqp::audited_urls(amqp_url, amqp_urls);
        urls.extend(database.audited_urls());
        Self {
            base,
            database,
            secrets: Vec::new(),
            urls,
        }
    }

    /// Audits the secret at `key` too.
    pub fn secret(mut self, key: &'static str, value: &'a SecretString) -> Self {
        self.secrets.push((key, value));
        self
    }
}

/// What every service's settings have, flattened into them (so the keys
/// stay `environment`, `server.addr`, `metrics.addr`, `telemetry.…`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct BaseSettings {
    /// `production` (the default) refuses missing and repository-known
    /// secrets; `development` accepts them with a warning.
    pub environment: Environment,
    pub server: ServerSettings,
    /// The admin HTTP endpoint: `/metrics`, `/livez`, `/readyz`.
    pub metrics: crate::admin_http::MetricsSettings,
    /// Span export (OTLP); trace context flows either way.
    pub telemetry: crate::telemetry::TelemetrySettings,
}

/// `[server]`: where a service listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// Listen address; port 0 picks a free port (tests). Each service's
    /// default port comes from its `load` defaults and `base.toml`.
    pub addr: String,
    /// Timeout, concurrency, message and metadata size, HTTP/2 keepalive.
    #[serde(flatten)]
    pub limits: crate::limits::ServerLimits,
    /// `[server.tls]`: optional TLS, and mutual TLS with a client CA.
    pub tls: crate::tls::ServerTls,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:0".into(),
            limits: Default::default(),
            tls: Default::default(),
        }
    }
}

/// The `--config DIR` flag every binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArg {
    /// Folder holding base.toml and <environment>.toml [default: $MEMBERFLOW_CONFIG, else the
    /// config/ folder beside or above this binary]
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The [`Source`] this flag names (see [`Source::locate`]).
    pub fn source(&self) -> Result<Source, SettingsError> {
        Source::locate(self.config.clone())
    }
}

/// Where a service reads its settings from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// Folder holding `base.toml` and `<environment>.toml`; `None` reads the
    /// environment variables only (the bench's child processes).
    pub dir: Option<PathBuf>,
    /// Variables to read instead of the process environment (tests).
    pub vars: Option<HashMap<String, String>>,
}

/// Why no settings could be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "no config folder: pass --config DIR or set {CONFIG_ENV} (no config/base.toml beside or above {0}, nor in the workspace it was built from)"
    )]
    NotFound(PathBuf),
    #[error("config folder {0}: {1}")]
    Invalid(PathBuf, #[source] Box<config::ConfigError>),
    #[error(transparent)]
    Config(Box<config::ConfigError>),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<config::ConfigError> for SettingsError {
    fn from(e: config::ConfigError) -> Self {
        Self::Config(Box::new(e))
    }
}

impl Source {
    /// The folder named by `flag`, else by [`CONFIG_ENV`], else the nearest
    /// `config/` holding `base.toml` beside or above the running binary.
    pub fn locate(flag: Option<PathBuf>) -> Result<Self, SettingsError> {
        let dir = match flag.or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from)) {
            Some(dir) => dir,
            None => {
                let exe = std::env::current_exe()?;
                // Beside or above the binary (an installed layout, or
                // `target/` inside the workspace), else the workspace this
                // binary was built from (a `CARGO_TARGET_DIR` elsewhere).
                let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
                exe.ancestors()
                    .skip(1)
                    .map(|a| a.join("config"))
                    .chain([workspace])
                    .find(|c| c.join("base.toml").is_file())
                    .ok_or(SettingsError::NotFound(exe))?
            }
        };
        Ok(Self::dir(dir))
    }

    /// Files from `dir`, then the process environment.
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            vars: None,
        }
    }

    /// Sets the variable `key` unless the environment already does: the
    /// launcher, the tests and the bench run in `development` this way
    /// without touching the process environment.
    pub fn with_default_var(mut self, key: &str, value: &str) -> Self {
        self.vars
            .get_or_insert_with(|| std::env::vars().collect())
            .entry(key.to_owned())
            .or_insert_with(|| value.to_owned());
        self
    }

    /// Only environment variables on top of the compiled-in defaults.
    pub fn env_only() -> Self {
        Self::default()
    }

    /// Reads `service`'s table through the layers into `T`. `defaults` sets
    /// keys whose default depends on the service (e.g. `database.url`).
    pub fn load<T: DeserializeOwned>(
        &self,
        service: &str,
        defaults: &[(&str, &str)],
    ) -> Result<T, SettingsError> {
        let prefix = format!("{}__", service.to_ascii_uppercase());
        let vars: HashMap<String, String> = match &self.vars {
            Some(v) => v.clone(),
            None => std::env::vars().collect(),
        }
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .collect();
        let layers = |environment: Option<&str>| -> Result<config::Config, SettingsError> {
            let mut b = config::Config::builder()
                .set_default(format!("{service}.environment"), "production")?;
            for (key, value) in defaults {
                b = b.set_default(format!("{service}.{key}"), *value)?;
            }
            if let Some(dir) = &self.dir {
                b = b.add_source(toml(&dir.join("base.toml")));
                if let Some(env) = environment {
                    b = b.add_source(toml(&dir.join(format!("{env}.toml"))));
                }
            }
            // No prefix: the variables were filtered above, and the service
            // name stays as the first key (`auth.server.addr`).
            let env = config::Environment::default()
                .separator("__")
                .try_parsing(true)
                .source(Some(vars.clone()));
            b.add_source(env).build().map_err(|e| match &self.dir {
                Some(d) => SettingsError::Invalid(d.clone(), Box::new(e)),
                None => e.into(),
            })
        };
        let environment: Environment = layers(None)?.get(&format!("{service}.environment"))?;
        Ok(layers(Some(environment.as_str()))?.get(service)?)
    }
}

fn toml(path: &Path) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(path)
        .format(config::FileFormat::Toml)
        .required(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Demo {
        environment: Environment,
        server: Server,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Server {
        addr: String,
        port: u16,
    }

    fn vars(pairs: &[(&str, &str)]) -> Source {
        Source {
            dir: None,
            vars: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn production_is_the_default_and_env_vars_reach_nested_keys() {
        let s: Demo = vars(&[("DEMO__SERVER__PORT", "7"), ("OTHER__SERVER__PORT", "9")])
            .load("demo", &[("server.addr", "x")])
            .unwrap();
        assert_eq!(s.environment, Environment::Production);
        assert_eq!(s.server.port, 7);
        assert_eq!(s.server.addr, "x");
    }

    #[test]
    fn environment_selects_the_file_layer() {
        let dir = std::env::temp_dir().join(format!("mf-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("base.toml"),
            "[demo.server]\naddr = \"base\"\nport = 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("development.toml"),
            "[demo.server]\naddr = \"dev\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("production.toml"), "").unwrap();
        let mut source = Source::dir(&dir);
        source.vars = Some(HashMap::new());
        let prod: Demo = source.load("demo", &[]).unwrap();
        assert_eq!((prod.server.addr.as_str(), prod.server.port), ("base", 1));
        source.vars = Some(HashMap::from([(
            "DEMO__ENVIRONMENT".to_owned(),
            "development".to_owned(),
        )]));
        let dev: Demo = source.load("demo", &[]).unwrap();
        assert_eq!(dev.environment, Environment::Development);
        assert_eq!((dev.server.addr.as_str(), dev.server.port), ("dev", 1));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
