//! Argon2id password hashing, off the async runtime.
use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng},
};

use tokio::sync::Semaphore;

use crate::{domain::Password, settings::PasswordSettings};

/// Hashes and verifies passwords with a configured cost.
#[derive(Clone)]
pub struct Hasher {
    argon: Argon2<'static>,
    /// Verified when the email is unknown, so a wrong email costs as much as a
    /// wrong password and timing does not reveal which members exist.
    dummy_hash: String,
    /// Bounds hashes in flight: without it every concurrent signup or login
    /// takes a blocking thread and `memory_kib` of RAM at once (32 clients at
    /// the production cost peaked above 1 GB).
    slots: Arc<Semaphore>,
}

impl Hasher {
    pub fn new(cfg: &PasswordSettings) -> anyhow::Result<Self> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .map_err(|e| anyhow::anyhow!("invalid password hashing cost: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = hash_with(&argon, "dummy password for unknown emails")?;
        let slots = match cfg.max_concurrent {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(Self {
            argon,
            dummy_hash,
            slots: Arc::new(Semaphore::new(slots)),
        })
    }

    /// Hashes on the blocking pool: Argon2 takes milliseconds of CPU.
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let argon = self.argon.clone();
        let password = password.expose().to_owned();
        let slot = self.slots.clone().acquire_owned().await?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            hash_with(&argon, &password)
        })
        .await?
    }

    /// Checks `password` against `hash`, or against a dummy hash when the
    /// member does not exist (the answer is then always `false`).
    pub async fn verify(&self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let argon = self.argon.clone();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let slot = self.slots.clone().acquire_owned().await?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let parsed =
                PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
            Ok(known && argon.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await?
    }
}

fn hash_with(argon: &Argon2<'_>, password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}
