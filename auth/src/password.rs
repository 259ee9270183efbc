//! Argon2id password hashing, off the async runtime, on a small fixed pool
//! of threads that each keep their Argon2 memory between hashes.
use std::{cell::RefCell, sync::Arc};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString, rand_core::OsRng},
};

use prometheus_client::metrics::gauge::Gauge;

use crate::{domain::Password, settings::PasswordSettings};

/// Hashes and verifies passwords with a configured cost.
#[derive(Clone)]
pub struct Hasher {
    argon: Argon2<'static>,
    /// Verified when the email is unknown, so a wrong email costs as much as a
    /// wrong password and timing does not reveal which members exist.
    dummy_hash: String,
    /// `max_concurrent` threads, the only ones that hash, each reusing one
    /// `memory_kib` buffer, so hashing holds at most `max_concurrent ×
    /// memory_kib`. (Allocating 19 MiB per hash on tokio's blocking pool left
    /// freed buffers in many malloc arenas: auth peaked near 1 GB RSS under 32
    /// concurrent signups at the production cost.)
    pool: Arc<rayon_core::ThreadPool>,
    /// Hashes submitted and not yet started (`memberflow_password_hash_queue`).
    queued: Gauge,
}

impl Hasher {
    pub fn new(cfg: &PasswordSettings, queued: Gauge) -> anyhow::Result<Self> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .map_err(|e| anyhow::anyhow!("invalid password hashing cost: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let threads = match cfg.max_concurrent {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = rayon_core::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("argon2-{i}"))
            .build()?;
        // On the pool, so no other thread keeps an Argon2-sized buffer.
        let dummy_hash = pool.install(|| hash_with(&argon, "dummy password for unknown emails"))?;
        Ok(Self {
            argon,
            dummy_hash,
            pool: Arc::new(pool),
            queued,
        })
    }

    /// Hashes on the hashing pool: Argon2 takes milliseconds of CPU.
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let argon = self.argon.clone();
        let password = password.expose().to_owned();
        self.run(move || hash_with(&argon, &password)).await
    }

    /// Checks `password` against `hash`, or against a dummy hash when the
    /// member does not exist (the answer is then always `false`).
    pub async fn verify(&self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        self.run(move || Ok(verify_with(password.as_bytes(), &hash)? && known))
            .await
    }

    /// Runs `work` on the hashing pool; callers queue when every thread is busy.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.queued.clone();
        queued.inc();
        self.pool.spawn(move || {
            queued.dec();
            let _ = tx.send(work());
        });
        rx.await?
    }
}

thread_local! {
    /// This hashing thread's Argon2 memory, grown to the cost in use and kept.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `argon` over `password` and `salt` in this thread's reused memory.
fn compute(argon: &Argon2<'_>, password: &[u8], salt: Salt<'_>) -> anyhow::Result<Output> {
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    let params = argon.params();
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    BLOCKS.with_borrow_mut(|blocks| {
        blocks.resize(params.block_count(), Block::default());
        Ok(Output::init_with(len, |out| {
            argon
                .hash_password_into_with_memory(password, salt, out, &mut blocks[..])
                .map_err(Into::into)
        })?)
    })
}

/// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), as
/// `argon2::PasswordHasher` writes it.
fn hash_with(argon: &Argon2<'_>, password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let output = compute(argon, password.as_bytes(), salt.as_salt())?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params())?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored`, computed with the
/// algorithm, version and cost recorded in it (so hashes made under an
/// older config still verify) and compared in constant time.
fn verify_with(password: &[u8], stored: &str) -> anyhow::Result<bool> {
    let phc = PasswordHash::new(stored).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        anyhow::bail!("stored hash has no salt or output");
    };
    let version = match phc.version {
        Some(v) => Version::try_from(v)?,
        None => Version::default(),
    };
    let argon = Argon2::new(
        Algorithm::try_from(phc.algorithm)?,
        version,
        Params::try_from(&phc)?,
    );
    Ok(compute(&argon, password, salt)? == expected)
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    use super::*;

    fn argon() -> Argon2<'static> {
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
    }

    #[test]
    fn our_hashes_and_the_reference_implementation_agree() {
        let ours = hash_with(&argon(), "correct horse").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon().verify_password(b"correct horse", &parsed).is_ok());
        assert!(argon().verify_password(b"wrong horse", &parsed).is_err());

        let salt = SaltString::generate(&mut OsRng);
        let theirs = argon()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(verify_with(b"correct horse", &theirs).unwrap());
        assert!(!verify_with(b"wrong horse", &theirs).unwrap());
    }

    #[test]
    fn verifies_with_the_cost_recorded_in_the_hash() {
        let old = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(256, 2, 1, None).unwrap(),
        );
        let stored = hash_with(&old, "pw-one").unwrap();
        // The same thread then hashes at a smaller cost, shrinking its memory.
        hash_with(&argon(), "pw-two").unwrap();
        assert!(verify_with(b"pw-one", &stored).unwrap());
    }
}
