//! Cost as data grows: the same measurements on empty databases and on
//! databases seeded to production size, in the same run. Seeded with
//! `generate_series`, not through the API: members in both services, an
//! inbox spread over its 7-day retention with time-ordered (UUIDv7-like)
//! ids as auth writes them, and in both cases one member with many tasks.
use std::time::Duration;

use memberflow_contract::proto::{
    auth::v1::auth_service_client::AuthServiceClient, task::v1::ListTasksRequest,
};
use memberflow_tests::{apps::mint_token, env::TestEnv};
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::{
    Lab, broker, consumer_apply,
    load::closed_loop,
    relay_drain::{drain_to, purge},
    report::{Figure, Measure},
    service::start_system,
    setup::{self, RelayDesign},
    stats::Latency,
    system::{create_tasks, measure_propagation},
};

/// The offered signup rate propagation is measured at.
const RATE: f64 = 500.0;
/// ListTasks page size: the largest allowed.
const PAGE_SIZE: i32 = 100;
/// The page the deep-page figure reads.
const DEEP_PAGE: usize = 50;
/// Prune passes timed.
const PRUNE_PASSES: usize = 50;
/// Each at-scale figure may cost this much more than on empty tables.
const TARGET: f64 = 1.25;

/// How big "at scale" is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    pub(crate) members: i64,
    pub(crate) inbox: i64,
    /// Tasks of the one busy member; at least `PAGE_SIZE × DEEP_PAGE`.
    pub(crate) tasks: i64,
    /// Calls per ListTasks page figure.
    pub(crate) list_calls: usize,
}

/// What one pass measured.
struct Costs {
    apply: f64,
    propagation: Latency,
    hit: Latency,
    drain: f64,
    page_first: Latency,
    page_deep: Latency,
    prune: Latency,
}

pub(crate) async fn run(lab: &mut Lab) -> anyhow::Result<()> {
    let scale = lab.plan.scale;
    let empty = measure(lab, scale, false).await?;
    let seeded = measure(lab, scale, true).await?;
    let at = format!(
        "{} members in auth and task, {} inbox rows over 7 days",
        crate::report::thousands(scale.members as f64),
        crate::report::thousands(scale.inbox as f64)
    );
    let rate = |lab: &mut Lab, name: &str, what: String, big: f64, small: f64| {
        lab.add(
            Figure::new(
                format!("{name}, at scale"),
                format!("{what}; {at}"),
                Measure::Rate { per_sec: big },
            )
            .against("empty tables, same run", Measure::Rate { per_sec: small })
            .target(format!("≥ 1/{TARGET}× empty"), big * TARGET >= small),
        );
        lab.charts.at_scale.push((name.to_owned(), small / big));
    };
    let latency = |lab: &mut Lab, name: &str, what: String, big: Latency, small: Latency| {
        lab.add(
            Figure::new(
                format!("{name}, at scale"),
                format!("{what}; {at}"),
                Measure::Latency(big),
            )
            .against("empty tables, same run", Measure::Latency(small))
            .target(
                format!("p99 ≤ {TARGET}× empty"),
                big.p99_ms <= TARGET * small.p99_ms,
            ),
        );
        lab.charts
            .at_scale
            .push((name.to_owned(), big.p99_ms / small.p99_ms));
    };
    rate(
        lab,
        "Consumer apply",
        format!("{} queued events, 1 task instance", lab.plan.apply_events),
        seeded.apply,
        empty.apply,
    );
    latency(
        lab,
        "Propagation signup → replica",
        format!(
            "open loop {:.0} s at {RATE}/s, {}",
            lab.plan.propagation.as_secs_f64(),
            RelayDesign::Batched.describe()
        ),
        seeded.propagation,
        empty.propagation,
    );
    latency(
        lab,
        "CreateTask, replica hit",
        format!("{} calls, 1 client, sequential", lab.plan.hits),
        seeded.hit,
        empty.hit,
    );
    rate(
        lab,
        "Relay drain",
        format!("{} committed outbox rows", lab.plan.drain_rows),
        seeded.drain,
        empty.drain,
    );
    let pages = |page: usize| {
        format!(
            "page {page} of {PAGE_SIZE} for a member with {} tasks, {} calls, 1 client",
            scale.tasks, scale.list_calls
        )
    };
    latency(
        lab,
        "ListTasks page 1",
        pages(1),
        seeded.page_first,
        empty.page_first,
    );
    latency(
        lab,
        &format!("ListTasks page {DEEP_PAGE}"),
        pages(DEEP_PAGE),
        seeded.page_deep,
        empty.page_deep,
    );
    latency(
        lab,
        "Inbox prune pass, nothing due",
        format!("one pass of task's retention prune (7 days), {PRUNE_PASSES} passes"),
        seeded.prune,
        empty.prune,
    );
    Ok(())
}

/// One pass over fresh databases, seeded to `scale` when `seed`.
async fn measure(lab: &mut Lab, scale: Scale, seed: bool) -> anyhow::Result<Costs> {
    let plan = lab.plan.clone();
    let mut env = TestEnv::new();
    let auth_db = setup::migrated(&mut env, "auth", &auth::startup::MIGRATOR).await?;
    let task_db = setup::migrated(&mut env, "task", &task::startup::MIGRATOR).await?;
    if seed {
        let started = tokio::time::Instant::now();
        seed_auth(&auth_db, scale.members).await?;
        seed_task(&task_db, scale.members, scale.inbox).await?;
        // The seeding's gigabyte of WAL is written out now, not by a
        // checkpoint in the middle of a measurement.
        sqlx::query("CHECKPOINT").execute(&task_db).await?;
        settle(&task_db).await;
        eprintln!("seeded in {:.0} s", started.elapsed().as_secs_f64());
    }
    let busy = busy_member(&task_db, scale.tasks).await?;

    let (_conn, channel) = broker::confirm_channel(&env.amqp_url()).await?;
    task::consumer::declare_topology(&channel, 10, None).await?;
    let drain = drain_to(
        lab,
        &mut env,
        &auth_db,
        &channel,
        RelayDesign::Batched,
        plan.drain_rows,
        None,
    )
    .await?;
    purge(&channel).await?;

    let settings = setup::task(&mut env, "not_ready", "http://127.0.0.1:9");
    let apply = consumer_apply::apply_on(lab, &mut env, &channel, &settings, 1)
        .await?
        .per_sec;

    let prune = closed_loop(1, PRUNE_PASSES, {
        let db = task_db.clone();
        move |_| {
            let db = db.clone();
            async move {
                memberflow_outbox::inbox::prune(
                    &db,
                    &task::erasure::SPEC.tables,
                    Duration::from_secs(7 * 24 * 3600),
                )
                .await?;
                Ok(())
            }
        }
    })
    .await?
    .latency;

    let (auth, task) = start_system(&mut env, "not_ready", &[]).await?;
    let signups = AuthServiceClient::new(auth.channel.clone());
    let propagated = measure_propagation(&signups, &task_db, RATE, plan.propagation).await?;
    let hits = &propagated.members[..plan.hits.min(propagated.members.len())];
    let hit = create_tasks(&task.channel, hits).await?;
    let (page_first, page_deep) = list_pages(&task.channel, busy, scale.list_calls).await?;
    lab.stop(auth, "auth").await?;
    lab.stop(task, "task").await?;
    Ok(Costs {
        apply,
        propagation: propagated.latency,
        hit,
        drain,
        page_first,
        page_deep,
        prune,
    })
}

/// A UUIDv7-like id for the instant `$ts` (48-bit Unix milliseconds first,
/// random after), so seeded ids sort by time as auth's do.
const UUID7: &str = "encode(overlay(uuid_send(gen_random_uuid()) \
     placing substring(int8send((extract(epoch FROM ts) * 1000)::int8) FROM 3) \
     FROM 1 FOR 6), 'hex')::uuid";

/// Rows `i` = 1..=`$1`, each with a time `ts` spread evenly over the `span`
/// (a PostgreSQL interval) before now, oldest first.
fn spread_over(span: &str) -> String {
    format!(
        "FROM generate_series(1, $1) i,
              LATERAL (SELECT now() - interval '{span}' * (1 - i::float8 / $1) AS ts) t"
    )
}

/// `n` members in auth, signed up over the last year, as a signup writes
/// them (the hash is a fixed placeholder: nobody logs in as them).
async fn seed_auth(db: &PgPool, n: i64) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO members (id, email, password_hash, nickname, region, created_at, updated_at)
         SELECT {UUID7}, 'seed-' || i || '@example.com',
                '$argon2id$v=19$m=65536,t=3,p=1$c2VlZHNlZWRzZWVk$c2VlZHNlZWRzZWVkc2VlZHNlZWRzZWVk',
                'seed member ' || i, 'Asia/Seoul', ts, ts
         {}",
        spread_over("365 days")
    )))
    .bind(n)
    .execute(db)
    .await?;
    sqlx::query("VACUUM ANALYZE members").execute(db).await?;
    Ok(())
}

/// The replica of those `members` (ids need not match auth's: no event
/// touches them), and `inbox` applied event ids received over the last 7
/// days less an hour, so the prune finds nothing due.
async fn seed_task(db: &PgPool, members: i64, inbox: i64) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO members (id, nickname, region, version, occurred_at, replicated_at)
         SELECT {UUID7}, 'seed member ' || i, 'Asia/Seoul', 1, ts, ts
         {}",
        spread_over("365 days")
    )))
    .bind(members)
    .execute(db)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO inbox (event_id, received_at)
         SELECT {UUID7}, ts
         {}",
        spread_over("167 hours")
    )))
    .bind(inbox)
    .execute(db)
    .await?;
    sqlx::query("VACUUM ANALYZE members").execute(db).await?;
    sqlx::query("VACUUM ANALYZE inbox").execute(db).await?;
    Ok(())
}

/// Waits (up to a minute) until no autovacuum worker runs, so the seeded
/// pass is not measured against the seeding's clean-up.
async fn settle(db: &PgPool) {
    let idle = || async {
        let workers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
        )
        .fetch_one(db)
        .await
        .ok()?;
        (workers == 0).then_some(())
    };
    if tokio::time::timeout(Duration::from_secs(60), async {
        while idle().await.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .is_err()
    {
        eprintln!("autovacuum still busy after 60 s; measuring anyway");
    }
}

/// A member with `tasks` tasks, one a minute, in task's replica.
async fn busy_member(db: &PgPool, tasks: i64) -> anyhow::Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO members (id, nickname, region, version, occurred_at)
         VALUES ($1, 'busy member', 'Asia/Seoul', 1, now())",
    )
    .bind(id)
    .execute(db)
    .await?;
    sqlx::query(
        "INSERT INTO tasks (id, member_id, request_id, title, due_at, time_zone, created_at)
         SELECT gen_random_uuid(), $1, gen_random_uuid(), 'task ' || i,
                now() + interval '1 day', 'Asia/Seoul', now() - interval '1 minute' * i
           FROM generate_series(1, $2) i",
    )
    .bind(id)
    .bind(tasks)
    .execute(db)
    .await?;
    sqlx::query("ANALYZE tasks").execute(db).await?;
    Ok(id)
}

/// Page 1 and page [`DEEP_PAGE`] of `member`'s tasks, `calls` times each.
async fn list_pages(
    channel: &Channel,
    member: Uuid,
    calls: usize,
) -> anyhow::Result<(Latency, Latency)> {
    let token = mint_token(member, chrono::Duration::hours(1));
    let client = memberflow_client::TaskClient::new(channel.clone(), &token)?;
    let mut page_token = String::new();
    for _ in 1..DEEP_PAGE {
        let page = client.clone().list_tasks(request(page_token)).await?;
        anyhow::ensure!(
            !page.next_page_token.is_empty(),
            "fewer than {DEEP_PAGE} pages"
        );
        page_token = page.next_page_token;
    }
    let time = |page_token: String| {
        let client = client.clone();
        closed_loop(1, calls, move |_| {
            let (mut client, page_token) = (client.clone(), page_token.clone());
            async move {
                let page = client.list_tasks(request(page_token)).await?;
                anyhow::ensure!(page.tasks.len() == PAGE_SIZE as usize, "a short page");
                Ok(())
            }
        })
    };
    let first = time(String::new()).await?.latency;
    let deep = time(page_token).await?.latency;
    Ok((first, deep))
}

fn request(page_token: String) -> ListTasksRequest {
    ListTasksRequest {
        page_size: PAGE_SIZE,
        page_token,
        ..Default::default()
    }
}
