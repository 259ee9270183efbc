//! Argon2id password hashing, off the async runtime, on a small fixed pool
//! of threads that each keep their Argon2 memory between hashes.
use std::{
    cell::RefCell,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString, rand_core::OsRng},
};

use memberflow_runtime::{error::Failure, unit};

use crate::{Error, domain::Password, metrics::AuthMetrics, settings::PasswordSettings};

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
    pool: Arc<Pool>,
    threads: usize,
    /// Hashes submitted and not yet started, and how many may be.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    /// How long the last hash took, in microseconds: sizes RetryInfo.
    last_micros: Arc<AtomicU64>,
    metrics: AuthMetrics,
}

impl Hasher {
    pub fn new(cfg: &PasswordSettings, metrics: AuthMetrics) -> anyhow::Result<Self> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .map_err(|e| anyhow::anyhow!("invalid password hashing cost: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let threads = match cfg.max_concurrent {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = Pool::start(threads)?;
        // On the pool, so no other thread keeps an Argon2-sized buffer.
        let started = Instant::now();
        let (done, dummy) = mpsc::channel();
        let dummy_argon = argon.clone();
        pool.spawn(move || {
            let _ = done.send(hash_with(&dummy_argon, "dummy password for unknown emails"));
        });
        let dummy_hash = dummy
            .recv()
            .map_err(|_| anyhow::anyhow!("the hashing pool stopped"))??;
        Ok(Self {
            argon,
            dummy_hash,
            pool: Arc::new(pool),
            threads,
            queued: Arc::default(),
            max_queued: cfg.max_queued,
            last_micros: Arc::new(AtomicU64::new(started.elapsed().as_micros() as u64)),
            metrics,
        })
    }

    /// Hashes on the hashing pool: Argon2 takes milliseconds of CPU.
    pub async fn hash(&self, password: &Password) -> Result<String, Error> {
        self.hash_in(self.admit()?, password).await
    }

    /// [`Self::hash`] in a place taken earlier.
    pub async fn hash_in(&self, admitted: Admitted, password: &Password) -> Result<String, Error> {
        let argon = self.argon.clone();
        let password = password.expose().to_owned();
        self.run(admitted, move || hash_with(&argon, &password))
            .await
    }

    /// Checks `password` against `hash`, or against a dummy hash when the
    /// member does not exist (the answer is then always `false`), in the
    /// place `admitted` holds.
    pub async fn verify(
        &self,
        admitted: Admitted,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, Error> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        self.run(admitted, move || {
            Ok(verify_with(password.as_bytes(), &hash)? && known)
        })
        .await
    }

    /// A place in the hashing queue. Callers queue while every thread is
    /// busy, up to `max_queued`; past that they get RESOURCE_EXHAUSTED at
    /// once. Taken before an attempt is charged to an account (see
    /// `throttle`), so a refusal for the server's own load charges nothing.
    pub fn admit(&self) -> Result<Admitted, Error> {
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        if waiting >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.metrics.password_hash_rejected.inc();
            let hash = Duration::from_micros(self.last_micros.load(Ordering::Relaxed));
            let ahead = (waiting / self.threads.max(1) + 1) as u32;
            return Err(Failure::Exhausted {
                message: "too many password checks at once; retry shortly".into(),
                retry_after: (hash * ahead)
                    .clamp(Duration::from_millis(10), Duration::from_secs(5)),
            }
            .into());
        }
        self.metrics.password_hash_queue.inc();
        Ok(Admitted {
            queued: self.queued.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Runs `work` on the hashing pool in the place `admitted` holds. A
    /// queued hash whose caller has gone (its unit's caller, see
    /// `memberflow_runtime::unit::caller`) is skipped when its turn comes,
    /// not computed for nobody.
    async fn run<T: Send + 'static>(
        &self,
        admitted: Admitted,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        unit::caller_waits()?;
        let caller = unit::caller();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (last, metrics) = (self.last_micros.clone(), self.metrics.clone());
        self.pool.spawn(move || {
            // Its turn has come: the place in the queue is given back.
            drop(admitted);
            if tx.is_closed() || caller.is_some_and(|c| c.is_cancelled()) {
                metrics.password_hash_abandoned.inc();
                return;
            }
            let started = Instant::now();
            let result = work();
            last.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            let _ = tx.send(result);
        });
        let Ok(result) = rx.await else {
            // Skipped because the caller had gone, or the pool stopped.
            unit::caller_waits()?;
            return Err(anyhow::anyhow!("the hashing pool dropped a job").into());
        };
        Ok(result?)
    }
}

/// A place in the hashing queue ([`Hasher::admit`]), given back when its
/// hash starts or when it is dropped unused.
pub struct Admitted {
    queued: Arc<AtomicUsize>,
    metrics: AuthMetrics,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.metrics.password_hash_queue.dec();
    }
}

/// The hashing threads: plain threads that block on a channel, so an idle one
/// sleeps in the kernel. (rayon's pool, used before, spins with
/// `sched_yield` between jobs: with one signup at a time on 2 CPUs shared
/// with PostgreSQL, that was 37% of auth's CPU samples, against 4% spent
/// hashing.) Dropping the last [`Hasher`] ends the threads.
struct Pool {
    jobs: mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

impl Pool {
    fn start(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(mpsc::RecvError) => return,
                        }
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// Queues `job` for the next free thread.
    fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        // Fails only once every thread has gone; the caller then sees its
        // oneshot dropped.
        let _ = self.jobs.send(Box::new(job));
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
