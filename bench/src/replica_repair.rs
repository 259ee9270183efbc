//! Keeping the replica right, measured: a full resync from auth into an
//! empty replica beside a bare keyset `SELECT` of the same rows, and a
//! reconcile pass that finds nothing, at growing sizes.
//!
//! Members are seeded with `generate_series`, not through the API, with ids
//! derived from the row number so both databases can be seeded alike.
use memberflow_tests::env::TestEnv;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    Lab,
    report::{Figure, Measure},
    service::{Service, ServiceProcess},
    setup,
};

/// Seeds `n` members into `pool`'s `members` table (auth's or the replica's
/// columns), ids `md5(row number)`, so two databases seeded alike match;
/// every fifth has ended its sessions, so the digest hashes both shapes.
async fn seed(pool: &PgPool, n: i64, replica: bool) -> anyhow::Result<()> {
    let sql = if replica {
        "INSERT INTO members (id, nickname, region, version, occurred_at,
                              sessions_not_before, sessions_version)
         SELECT md5(g::text)::uuid, 'seed ' || g, 'Asia/Seoul', 1 + g % 3, now(),
                CASE WHEN g % 5 = 0 THEN timestamptz '2026-11-01 12:00:00.123456Z' END,
                CASE WHEN g % 5 = 0 THEN 1 + g % 3 ELSE 0 END
           FROM generate_series(1, $1) g"
    } else {
        "INSERT INTO members (id, email, password_hash, nickname, region, version,
                              sessions_not_before, sessions_version)
         SELECT md5(g::text)::uuid, 'seed' || g || '@example.com', 'x', 'seed ' || g,
                'Asia/Seoul', 1 + g % 3,
                CASE WHEN g % 5 = 0 THEN timestamptz '2026-11-01 12:00:00.123456Z' END,
                CASE WHEN g % 5 = 0 THEN 1 + g % 3 ELSE 0 END
           FROM generate_series(1, $1) g"
    };
    sqlx::query(sql).bind(n).execute(pool).await?;
    sqlx::query("ANALYZE members").execute(pool).await?;
    Ok(())
}

/// Starts auth on a fresh env and prepares task's database beside it.
async fn stage(
    env: &mut TestEnv,
) -> anyhow::Result<(
    ServiceProcess,
    PgPool,
    PgPool,
    task::auth_client::AuthClient,
)> {
    let auth = ServiceProcess::start(
        Service::Auth,
        &setup::auth(env, setup::HashCost::BENCH, setup::RelayDesign::Batched),
    )
    .await?;
    let auth_db = env.pool("auth").await;
    let task_settings =
        memberflow_runtime::db::DatabaseSettings::with_url(&env.database_url("task"));
    memberflow_runtime::db::ensure_database(&task_settings).await?;
    let task_db = env.pool("task").await;
    task::startup::MIGRATOR.run(&task_db).await?;
    let mut cfg = task::settings::AuthSettings {
        addr: format!("http://{}", auth.addr),
        ..Default::default()
    };
    cfg.service_token = memberflow_runtime::secrets::DEV_SERVICE_TOKEN.into();
    let source = task::auth_client::AuthClient::new(&cfg)?;
    Ok((auth, auth_db, task_db, source))
}

pub(crate) async fn run(lab: &mut Lab) -> anyhow::Result<()> {
    resync_rate(lab).await?;
    for n in lab.plan.reconcile_members.clone() {
        reconcile_cost(lab, n).await?;
    }
    Ok(())
}

async fn resync_rate(lab: &mut Lab) -> anyhow::Result<()> {
    let n = lab.plan.resync_members;
    let mut env = TestEnv::new();
    let (auth, auth_db, task_db, source) = stage(&mut env).await?;
    seed(&auth_db, n, false).await?;

    // Baseline: the same rows, keyset-paged 1,000 at a time, read straight
    // from auth's database over one connection.
    let mut conn = auth_db.acquire().await?;
    let started = Instant::now();
    let mut after = Uuid::nil();
    let mut read = 0;
    loop {
        let page: Vec<(Uuid, String, String, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT id, nickname, region, version, updated_at FROM members
                  WHERE id > $1 ORDER BY id LIMIT 1000",
        )
        .bind(after)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = page.last() else { break };
        after = last.0;
        read += page.len();
    }
    let bare = read as f64 / started.elapsed().as_secs_f64();
    drop(conn);

    let started = Instant::now();
    let done = task::resync::resync(&task_db, &source, task::resync::Scope::All, |_| {}).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        done.changed == n as u64,
        "resync changed {} of {n}",
        done.changed
    );
    let per_sec = n as f64 / secs;
    lab.add(
        Figure::new(
            "Resync into an empty replica",
            format!(
                "{n} members, auth ListMembers (pages of 1,000) → task upsert + checkpoint per page, {secs:.1} s"
            ),
            Measure::Rate { per_sec },
        )
        .against(
            "bare keyset SELECT of the same rows, pages of 1,000, one connection",
            Measure::Rate { per_sec: bare },
        ),
    );
    lab.stop(auth, "auth").await
}

async fn reconcile_cost(lab: &mut Lab, n: i64) -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    let (auth, auth_db, task_db, source) = stage(&mut env).await?;
    seed(&auth_db, n, false).await?;
    seed(&task_db, n, true).await?;
    // Warm both caches once, then time a pass.
    task::reconcile::reconcile_once(&task_db, &source, task::repair::UnknownRows::Report).await?;
    let started = Instant::now();
    let pass =
        task::reconcile::reconcile_once(&task_db, &source, task::repair::UnknownRows::Report)
            .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(pass.found.total() == 0, "replica and auth differ: {pass:?}");
    lab.add(Figure::new(
        format!("Reconcile pass, nothing differs, {n} members"),
        format!(
            "{} buckets compared; rows read on task's side (auth reads as many); digests of 64 buckets per request",
            pass.buckets
        ),
        Measure::Pass {
            secs,
            rows_read: pass.rows_read,
        },
    ));

    // The pass's two digest statements alone, with today's hash (id,
    // version and content) beside the one before issue 27 (id and version
    // only), alternating so both see the same load; the median of 3 each.
    let (mut content, mut versions) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        content.push(
            digest_statements(
                &auth_db,
                &task_db,
                memberflow_contract::digest::ROW_HASH_SQL,
            )
            .await?,
        );
        versions.push(digest_statements(&auth_db, &task_db, ID_VERSION_HASH_SQL).await?);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    lab.add(
        Figure::new(
            format!("Reconcile digests, nothing differs, {n} members"),
            "auth's digest of all members in 64 buckets, then the replica's digest of the same bounds: the whole SQL of a pass that finds nothing; hash of id, version, nickname, region and session state; median of 3",
            Measure::Pass {
                secs: median(content),
                rows_read: n as u64,
            },
        )
        .against(
            "the same statements hashing (id, version) only, as before issue 27",
            Measure::Pass {
                secs: median(versions),
                rows_read: n as u64,
            },
        ),
    );
    lab.stop(auth, "auth").await
}

/// The row hash before issue 27, which covered no content: the baseline of
/// the digest figure.
const ID_VERSION_HASH_SQL: &str = "hashtextextended(id::text || ':' || version::text, 0)";

/// Runs a nothing-differs pass's SQL with row hash `hash`: auth's digest of
/// the whole id space in 64 buckets (as `auth::repo::digest`), then the
/// replica's digest of the same bounds (as `task::replica::digest`); returns
/// the seconds both took and checks that they agree.
async fn digest_statements(auth_db: &PgPool, task_db: &PgPool, hash: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let theirs: Vec<(Uuid, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT max(id::text)::uuid, count(*), sum(h)::text FROM (
             SELECT id, {hash} AS h, ntile(64) OVER (ORDER BY id) AS b FROM members) x
          GROUP BY b ORDER BY b"
    )))
    .fetch_all(auth_db)
    .await?;
    let mut after = Vec::with_capacity(theirs.len());
    let mut lower = Uuid::nil();
    for (upper, _, _) in &theirs {
        after.push(lower);
        lower = *upper;
    }
    let until: Vec<Uuid> = theirs.iter().map(|(u, _, _)| *u).collect();
    let ours: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT x.n, x.hash
           FROM UNNEST($1::uuid[], $2::uuid[]) WITH ORDINALITY AS b(lo, hi, i)
          CROSS JOIN LATERAL (
                SELECT count(*) AS n, coalesce(sum({hash}), 0)::text AS hash
                  FROM members WHERE id > b.lo AND id <= b.hi) x
          ORDER BY b.i"
    )))
    .bind(&after)
    .bind(&until)
    .fetch_all(task_db)
    .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        theirs.iter().map(|(_, n, h)| (*n, h.clone())).eq(ours),
        "the two sides' digests differ"
    );
    Ok(secs)
}
