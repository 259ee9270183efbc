//! `nemesis`: real operations on the real binaries under a random schedule
//! of faults, then a check of what was acknowledged against what the
//! system ended with (after Jepsen, and Wolverine's DurabilityChaosRig for
//! the ledger). Two auth and two task processes, every link behind a proxy
//! the schedule can cut, blackhole or slow, fresh databases and a fresh
//! vhost; the schedule also kills, pauses and clock-skews instances, and
//! has clients cut their own calls.
//!
//! ```text
//! cargo build -p memberflow-tests --bins
//! cargo run -p memberflow-tests --bin nemesis -- --seed 7 --secs 60
//! ```
//!
//! A seed replays the same fault schedule and the same choices of
//! operations; the timing between them is the machine's.
pub mod check;
pub mod faults;
pub mod ledger;
pub mod load;

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lapin::options::QueueDeclareOptions;
use memberflow_contract::topology::{DEAD_LETTER_QUEUE, ERASURE_DEAD_LETTER_QUEUE};
use tonic::transport::Channel;

use self::{
    faults::{Fault, INSTANCES, Instance, Link, Planned},
    ledger::Ledger,
};
use crate::{
    env::TestEnv,
    process::{ServiceProcess, auth_vars, task_vars},
    proxy::TcpProxy,
};

/// task's `reconcile.interval_secs` in a run: short, so that the bound on
/// a suspension whose event is held (docs/security.md) is checked in
/// seconds, not in the default's ten minutes.
pub const RECONCILE_INTERVAL_SECS: u64 = 2;

/// The relay's and the reconciler's `lease_ms` (the defaults): how long a
/// killed or hung holder keeps the work from the other instance.
const LEASE_MS: u64 = 6_000;

/// How long after an acknowledged suspension task may still serve the
/// member in a run, as docs/security.md states it for these settings: a
/// fault that holds the event heals (at most [`faults::LONGEST_MS`]) or
/// its lease moves to the other instance ([`LEASE_MS`]), whichever is
/// longer, then one reconciler interval, and two seconds for the pass and
/// the reconnections. auth refuses from the answer on.
pub fn suspension_bound() -> Duration {
    Duration::from_millis(faults::LONGEST_MS.max(LEASE_MS))
        + Duration::from_secs(RECONCILE_INTERVAL_SECS + 2)
}

/// What a run is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub seed: u64,
    /// Seconds of load under faults.
    pub secs: u64,
    pub clients: usize,
    /// How long the system may take to converge once every fault healed.
    pub converge_within: Duration,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub ops: usize,
    pub faults: usize,
    pub violations: Vec<check::Violation>,
    pub converged_in: Option<Duration>,
    pub ledger: Ledger,
    /// Acknowledged suspensions, and the latest a call still succeeded at
    /// task after one (its start, after the suspension's answer).
    pub suspensions: usize,
    pub latest_after_suspension: Option<Duration>,
}

impl Report {
    /// The line the binary prints last.
    pub fn summary(&self, seed: u64) -> String {
        format!(
            "nemesis seed={seed} ops={} faults={} violations={} converged_in={} \
             suspensions={} served_after_suspension_max={} bound={}ms",
            self.ops,
            self.faults,
            self.violations.len(),
            self.converged_in
                .map_or("never".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
            self.suspensions,
            self.latest_after_suspension
                .map_or("none".to_owned(), |d| format!("{}ms", d.as_millis())),
            suspension_bound().as_millis(),
        )
    }
}

/// One service instance: how to (re)start it, and the running process.
struct Node {
    service: &'static str,
    vars: Vec<(String, String)>,
    addr: SocketAddr,
    /// Seconds its wall clock is moved by (a [`Fault::Skew`]), if any.
    skew: Option<i64>,
    process: Option<ServiceProcess>,
}

impl Node {
    /// Starts the instance on its address; tries again for up to 10 s
    /// while the port is taken (by a client socket's ephemeral port, say).
    async fn start(&mut self, exe: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ServiceProcess::try_start_skewed(exe, self.service, &self.vars, self.skew).await {
                Ok(p) => {
                    self.process = Some(p);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("nemesis: {e}; starting it again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Stops the instance and starts it again with its wall clock moved by
    /// `skew`, or not at all.
    async fn restart(&mut self, exe: &str, skew: Option<i64>) {
        if let Some(p) = self.process.take() {
            p.kill().await;
        }
        self.skew = skew;
        self.start(exe).await;
    }
}

/// A free loopback address, so an instance restarts where its clients and
/// proxies expect it.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The system under test.
struct Topology {
    exe: String,
    auths: Vec<Node>,
    tasks: Vec<Node>,
    links: HashMap<Link, TcpProxy>,
    /// The clients' share of cancelled calls ([`Fault::Cancels`]).
    cancels: load::Cancels,
}

impl Topology {
    async fn start(env: &mut TestEnv, exe: String) -> Self {
        let mut links = HashMap::new();
        let auth_addrs: Vec<SocketAddr> = (0..INSTANCES).map(|_| free_addr()).collect();
        let mut auths = Vec::new();
        for (i, addr) in auth_addrs.iter().enumerate() {
            let db = TcpProxy::start(&env.pg_host()).await;
            let mq = TcpProxy::start(&env.amqp_host()).await;
            let mut vars = auth_vars(env);
            vars.extend([
                ("SERVER__ADDR".to_owned(), addr.to_string()),
                (
                    "DATABASE__URL".to_owned(),
                    env.database_url("auth").replace(&env.pg_host(), &db.host()),
                ),
                ("AMQP__URL".to_owned(), env.amqp_url_via(&mq.host())),
                ("RELAY__LEADER_RETRY_MS".to_owned(), "100".to_owned()),
                ("DATABASE__ACQUIRE_TIMEOUT_MS".to_owned(), "1000".to_owned()),
            ]);
            links.insert(Link::AuthDb(i), db);
            links.insert(Link::AuthBroker(i), mq);
            auths.push(Node {
                service: "auth",
                vars,
                addr: *addr,
                skew: None,
                process: None,
            });
        }
        let mut tasks = Vec::new();
        for j in 0..INSTANCES {
            let db = TcpProxy::start(&env.pg_host()).await;
            let mq = TcpProxy::start(&env.amqp_host()).await;
            let to_auth = TcpProxy::start(&auth_addrs[j % INSTANCES].to_string()).await;
            let mut vars = task_vars(env, &format!("http://{}", to_auth.host()));
            vars.extend([
                ("SERVER__ADDR".to_owned(), free_addr().to_string()),
                (
                    "DATABASE__URL".to_owned(),
                    env.database_url("task").replace(&env.pg_host(), &db.host()),
                ),
                ("AMQP__URL".to_owned(), env.amqp_url_via(&mq.host())),
                ("RELAY__LEADER_RETRY_MS".to_owned(), "100".to_owned()),
                ("DATABASE__ACQUIRE_TIMEOUT_MS".to_owned(), "1000".to_owned()),
                (
                    "RECONCILE__INTERVAL_SECS".to_owned(),
                    RECONCILE_INTERVAL_SECS.to_string(),
                ),
                // One instance reads through to auth, the other answers
                // USER_NOT_READY: both modes under the same faults.
                (
                    "CONSISTENCY__MODE".to_owned(),
                    if j == 0 { "read_through" } else { "not_ready" }.to_owned(),
                ),
            ]);
            let addr = vars
                .iter()
                .find(|(k, _)| k == "SERVER__ADDR")
                .and_then(|(_, v)| v.parse().ok())
                .expect("an address");
            links.insert(Link::TaskDb(j), db);
            links.insert(Link::TaskBroker(j), mq);
            links.insert(Link::TaskAuth(j), to_auth);
            tasks.push(Node {
                service: "task",
                vars,
                addr,
                skew: None,
                process: None,
            });
        }
        let mut topology = Self {
            exe,
            auths,
            tasks,
            links,
            cancels: load::Cancels::default(),
        };
        for node in topology.auths.iter_mut().chain(topology.tasks.iter_mut()) {
            node.start(&topology.exe).await;
        }
        topology
    }

    fn node(&mut self, instance: Instance) -> &mut Node {
        match instance {
            Instance::Auth(i) => &mut self.auths[i],
            Instance::Task(i) => &mut self.tasks[i],
        }
    }

    fn channels(nodes: &[Node]) -> Vec<Channel> {
        nodes
            .iter()
            .map(|n| {
                Channel::from_shared(format!("http://{}", n.addr))
                    .expect("uri")
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy()
            })
            .collect()
    }

    /// Injects `fault`.
    async fn inject(&mut self, fault: Fault, task_db: &sqlx::PgPool) {
        match fault {
            Fault::Kill(i) => self.node(i).process = None,
            Fault::Pause(i) => {
                if let Some(p) = &self.node(i).process {
                    p.pause();
                }
            }
            Fault::Cut(l) => self.links[&l].cut(),
            Fault::Blackhole(l) => self.links[&l].blackhole(),
            Fault::PostgresRestart => tokio::task::block_in_place(|| postgres("restart")),
            Fault::BrokerRestart => tokio::task::block_in_place(|| rabbitmqctl(&["stop_app"])),
            Fault::TaskDbSqlstate => {
                let _ = sqlx::raw_sql(
                    "CREATE OR REPLACE FUNCTION nemesis_fault() RETURNS trigger
                       LANGUAGE plpgsql AS $$ BEGIN
                       RAISE EXCEPTION 'nemesis' USING ERRCODE = '40001'; END $$;
                     DROP TRIGGER IF EXISTS nemesis_fault ON members;
                     CREATE TRIGGER nemesis_fault BEFORE INSERT OR UPDATE ON members
                       FOR EACH ROW EXECUTE FUNCTION nemesis_fault();",
                )
                .execute(task_db)
                .await;
            }
            Fault::Slow(l, each_way) => self.links[&l].slow(each_way),
            Fault::Cancels(share) => self.cancels.set(share),
            Fault::Skew(i, secs) => {
                let exe = self.exe.clone();
                self.node(i).restart(&exe, Some(secs)).await;
            }
        }
    }

    /// Heals `fault`.
    async fn heal(&mut self, fault: Fault, task_db: &sqlx::PgPool) {
        match fault {
            Fault::Kill(i) => {
                let exe = self.exe.clone();
                self.node(i).start(&exe).await;
            }
            Fault::Pause(i) => {
                if let Some(p) = &self.node(i).process {
                    p.resume();
                }
            }
            Fault::Cut(l) | Fault::Blackhole(l) | Fault::Slow(l, _) => self.links[&l].restore(),
            Fault::Cancels(_) => self.cancels.set(0),
            Fault::Skew(i, _) => {
                let exe = self.exe.clone();
                self.node(i).restart(&exe, None).await;
            }
            Fault::PostgresRestart => wait_postgres().await,
            Fault::BrokerRestart => tokio::task::block_in_place(|| {
                rabbitmqctl(&["start_app"]);
                rabbitmqctl(&["await_startup"]);
            }),
            Fault::TaskDbSqlstate => {
                // The pool reconnects after a PostgreSQL restart; retry.
                for _ in 0..50 {
                    let dropped = sqlx::raw_sql(
                        "DROP TRIGGER IF EXISTS nemesis_fault ON members;
                         DROP FUNCTION IF EXISTS nemesis_fault();",
                    )
                    .execute(task_db)
                    .await;
                    if dropped.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
}

fn postgres(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("a PostgreSQL cluster in /etc/postgresql");
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "pg_ctlcluster {action}");
}

async fn wait_postgres() {
    for _ in 0..300 {
        let ready = std::process::Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("PostgreSQL did not come back within 30 s");
}

/// Messages in the two dead-letter queues of `env`'s vhost.
async fn dead_letters(env: &TestEnv) -> u32 {
    let Ok(conn) = memberflow_runtime::amqp::connect(&env.amqp_url(), "nemesis").await else {
        return u32::MAX;
    };
    let mut n = 0;
    for queue in [DEAD_LETTER_QUEUE, ERASURE_DEAD_LETTER_QUEUE] {
        let Ok(channel) = conn.create_channel().await else {
            return u32::MAX;
        };
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        n += declared.map_or(0, |q| q.message_count());
    }
    let _ = conn.close(200, "done".into()).await;
    n
}

/// Runs the load under the seed's faults, heals, waits for convergence and
/// checks. `exe` is the `mf-service` binary.
pub async fn run(options: Options, exe: String) -> anyhow::Result<Report> {
    let mut env = TestEnv::new();
    let mut topology = Topology::start(&mut env, exe).await;
    let (auth_db, task_db) = (env.pool("auth").await, env.pool("task").await);
    let ledger = Ledger::create(std::env::temp_dir().join(format!(
        "nemesis-{}-{}.jsonl",
        options.seed,
        uuid::Uuid::new_v4().simple()
    )))?;
    let endpoints = load::Endpoints {
        auth: Topology::channels(&topology.auths),
        task: Topology::channels(&topology.tasks),
    };
    let admin_account = make_admin(&endpoints, &auth_db).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let tokens = load::Tokens::default();
    let clients: Vec<_> = (0..options.clients)
        .map(|k| {
            tokio::spawn(load::client(
                k,
                options.seed,
                endpoints.clone(),
                topology.cancels.clone(),
                ledger.clone(),
                tokens.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let admin = tokio::spawn(load::admin(
        options.clients,
        options.seed,
        endpoints.clone(),
        admin_account,
        ledger.clone(),
        stop.clone(),
    ));

    let plan: Vec<Planned> = faults::plan(options.seed, options.secs);
    let began = tokio::time::Instant::now();
    for p in &plan {
        tokio::time::sleep_until(began + p.at).await;
        eprintln!(
            "nemesis: {:>6.1}s {:?} for {:?}",
            p.at.as_secs_f64(),
            p.fault,
            p.lasts
        );
        topology.inject(p.fault, &task_db).await;
        tokio::time::sleep(p.lasts).await;
        topology.heal(p.fault, &task_db).await;
    }
    tokio::time::sleep_until(began + Duration::from_secs(options.secs)).await;
    stop.cancel();
    let mut must_refuse = Vec::new();
    for c in clients {
        must_refuse.extend(c.await?.must_refuse);
    }
    admin.await?;

    let healed = Instant::now();
    let mut converged_in = None;
    while healed.elapsed() < options.converge_within {
        if check::converged(&auth_db, &task_db).await.unwrap_or(false) {
            converged_in = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let entries = ledger.entries();
    let violations = check::check(
        &entries,
        &must_refuse,
        &tokens.all(),
        suspension_bound(),
        &auth_db,
        &task_db,
        &endpoints.task,
        dead_letters(&env).await,
    )
    .await?;
    drop(topology);
    let late_at_task = check::late_after_suspension(&entries)
        .into_iter()
        .filter(|l| l.at_task)
        .map(|l| Duration::from_millis(l.after_ms as u64))
        .max();
    Ok(Report {
        ops: entries.len(),
        faults: plan.len(),
        violations,
        converged_in,
        suspensions: entries
            .iter()
            .filter(|e| e.op == "SuspendMember" && e.answer.is_ok())
            .count(),
        latest_after_suspension: late_at_task,
        ledger,
    })
}

/// Signs up the run's admin and makes them one as an operator would
/// (`memberflow-admin grant-admin` runs the same function), before any
/// fault: the services may still be opening, so SignUp is retried for up
/// to 30 s.
async fn make_admin(
    endpoints: &load::Endpoints,
    auth_db: &sqlx::PgPool,
) -> anyhow::Result<load::AdminAccount> {
    use memberflow_contract::proto::auth::v1::{
        SignUpRequest, auth_service_client::AuthServiceClient,
    };
    let account = load::AdminAccount {
        email: "nemesis-admin@example.com".to_owned(),
        password: "the nemesis admin's passphrase".to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut auth = AuthServiceClient::new(endpoints.auth[0].clone());
    loop {
        let signed = auth
            .sign_up(SignUpRequest {
                email: account.email.clone(),
                password: account.password.clone(),
                nickname: "Admin".to_owned(),
                region: "UTC".to_owned(),
            })
            .await;
        match signed {
            Ok(_) => break,
            Err(s) if Instant::now() < deadline => {
                eprintln!("nemesis: the admin's SignUp: {s}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => anyhow::bail!("the admin's SignUp: {s}"),
        }
    }
    let outbox =
        memberflow_outbox::write::Outbox::without_wake(auth_db.clone(), &auth::outbox::SPEC);
    let email = auth::domain::Email::parse(&account.email)
        .map_err(|e| anyhow::anyhow!("the admin's email: {e:?}"))?;
    auth::permissions::grant_admin(&outbox, &email)
        .await
        .map_err(|e| anyhow::anyhow!("grant-admin: {e:?}"))?
        .ok_or_else(|| anyhow::anyhow!("grant-admin: no member {}", account.email))?;
    memberflow_outbox::wake::notify(auth_db, auth::outbox::SPEC.channel).await?;
    Ok(account)
}
