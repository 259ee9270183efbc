//! Layered configuration: compiled-in defaults, then a TOML file, then
//! environment variables with a service prefix and `__` as the separator
//! (`AUTH__SERVER__ADDR` sets `server.addr`).
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Where a service reads its settings from.
#[derive(Debug, Clone)]
pub struct Source {
    /// Env prefix, e.g. `AUTH`.
    pub prefix: &'static str,
    /// The file, if any. Missing files are an error only when named explicitly.
    pub file: Option<PathBuf>,
    /// Whether `file` was named by the user (flag or `<PREFIX>_CONFIG`).
    pub explicit: bool,
}

impl Source {
    /// Picks the file from `--config PATH`, then `<PREFIX>_CONFIG`, then the
    /// conventional `config/<service>.toml` if it exists.
    pub fn from_args(prefix: &'static str, conventional: &str) -> Self {
        let mut args = std::env::args().skip(1);
        let mut flag = None;
        while let Some(a) = args.next() {
            if a == "--config" {
                flag = args.next().map(PathBuf::from);
            } else if let Some(p) = a.strip_prefix("--config=") {
                flag = Some(PathBuf::from(p));
            }
        }
        let from_env = std::env::var_os(format!("{prefix}_CONFIG")).map(PathBuf::from);
        match flag.or(from_env) {
            Some(file) => Self {
                prefix,
                file: Some(file),
                explicit: true,
            },
            None => Self {
                prefix,
                file: Some(PathBuf::from(conventional)),
                explicit: false,
            },
        }
    }

    /// Only environment variables on top of the defaults.
    pub fn env_only(prefix: &'static str) -> Self {
        Self {
            prefix,
            file: None,
            explicit: false,
        }
    }

    /// Reads the layers into `T`. `T` and its parts are `#[serde(default)]`,
    /// so their `Default` impls are the bottom layer; `defaults` sets keys whose
    /// default depends on the service (e.g. `database.url`).
    pub fn load<T: DeserializeOwned>(
        &self,
        defaults: &[(&str, &str)],
    ) -> Result<T, config::ConfigError> {
        let mut builder = config::Config::builder();
        for (key, value) in defaults {
            builder = builder.set_default(*key, *value)?;
        }
        if let Some(file) = &self.file {
            builder = builder.add_source(
                config::File::from(Path::new(file))
                    .format(config::FileFormat::Toml)
                    .required(self.explicit),
            );
        }
        builder
            .add_source(
                config::Environment::with_prefix(self.prefix)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()
    }
}
