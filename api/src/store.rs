//! The store: API keys, consumed token ids, the session index and the event log, on SQLite
//! (local mode) or PostgreSQL (cluster) through one portable schema.

use cliscale_core::{SessionPhase, TerminalReason};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor, Row};

pub use crate::catalog::{RunsOf, ScheduleRow, SecretRow, TemplateRow, TriggerRow};
use crate::error::{ApiError, Result};
use crate::keys::Role;
use crate::model::Origin;
use crate::model::{SessionRecord, SessionSpec, phase_from_str, reason_from_str};
use cliscale_core::spec::{CodeSpec, EnvVar};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    /// Woken after every committed session write, so this process' feeds answer at once;
    /// writes by other processes are found by the feeds' polling.
    changed: std::sync::Arc<tokio::sync::Notify>,
    /// Local mode: the bytes of stored output go to files here, not into rows.
    pub(crate) output_files: Option<std::sync::Arc<crate::output_files::OutputFiles>>,
}

/// A stored API key (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub secret_hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// What a create did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New,
    /// The idempotency key named this session already.
    Existing(String),
}

/// What a change to an API key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    Done,
    /// No standing key has that id.
    NotFound,
    /// It is the last admin key standing: administrators would lock themselves out.
    LastAdmin,
}

/// The owner of what was made on a cluster outside the API (a CommandSession, CommandTemplate
/// or CommandSchedule applied with kubectl): whoever may write those in the namespace is
/// trusted by the cluster's RBAC, not by an API key.
pub const CLUSTER_OWNER: &str = "kubernetes";

/// An entry for the event log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewEvent {
    pub session: Option<String>,
    pub template: Option<String>,
    pub schedule: Option<String>,
    /// Who did it: an API key id, `trigger:<id>` or `schedule:<name>`.
    pub actor: Option<String>,
    pub kind: String,
    pub message: String,
}

impl NewEvent {
    /// An entry about `session`, filed under its template and schedule too.
    pub fn about(session: &SessionRecord, kind: &str, message: String) -> Self {
        Self {
            session: Some(session.id.clone()),
            template: session.origin.template.clone(),
            schedule: session.origin.schedule.clone(),
            kind: kind.into(),
            message,
            ..Default::default()
        }
    }

    pub fn by(self, actor: impl Into<String>) -> Self {
        Self { actor: Some(actor.into()), ..self }
    }
}

/// Filters, order and page of `GET /api/events`.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub session: Option<String>,
    pub template: Option<String>,
    pub schedule: Option<String>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    /// Only what this key may see (an operator's own), or everything.
    pub visible_to: Option<String>,
    pub after: Option<i64>,
    pub before: Option<i64>,
    pub descending: bool,
    /// Continue after this (seq, id), in the query's order.
    pub from: Option<(i64, String)>,
    pub limit: i64,
}

enum LogBind {
    Text(String),
    Int(i64),
}

/// One stored entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub seq: i64,
    pub id: String,
    pub at: i64,
    pub kind: String,
    pub session: Option<String>,
    pub template: Option<String>,
    pub schedule: Option<String>,
    pub actor: Option<String>,
    pub message: String,
}

/// Filters and page of `GET /api/sessions`.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    pub phase: Option<SessionPhase>,
    pub owner: Option<String>,
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
    /// A `LIKE` pattern (see [`search_pattern`]) the session's search text matches.
    pub text: Option<String>,
    /// Continue after this (created_at, id), newest first.
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

/// A console login: the API key it stands for, until it expires. The cookie holds a secret
/// whose SHA-256 is the key here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub secret_hash: String,
    pub key_id: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A change of a session's observed state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusUpdate {
    pub phase: Option<SessionPhase>,
    pub exit_code: Option<i64>,
    pub reason: Option<TerminalReason>,
    pub message: Option<String>,
    pub runner_addr: Option<String>,
}

pub fn now() -> i64 {
    cliscale_core::token::now_secs() as i64
}

impl Store {
    /// Connects to `url` (`sqlite://path`, `postgres://…`) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(ApiError::Internal(format!(
                "unsupported database URL scheme in {:?}; use sqlite:// or postgres://",
                url.split(':').next().unwrap_or_default()
            )));
        };
        let mut options =
            AnyPoolOptions::new().max_connections(if backend == Backend::Sqlite { 4 } else { 16 });
        if backend == Backend::Postgres {
            // A database that cannot be reached fails a request in seconds (503), not after the
            // default half minute.
            options = options.acquire_timeout(std::time::Duration::from_secs(5));
        }
        if backend == Backend::Sqlite {
            // Concurrent writers wait for the lock instead of failing with SQLITE_BUSY.
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    // In WAL mode NORMAL skips the fsync per commit and stays consistent; a power
                    // cut may lose the last commits (docs/api.md).
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    // Stored output arrives in batches of up to 4 MiB: checkpoint the WAL into
                    // the database every 64 MiB rather than after nearly every batch.
                    conn.execute("PRAGMA wal_autocheckpoint = 16384").await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(url).await?;
        MIGRATOR.run(&pool).await?;
        let store = Self { pool, backend, changed: Default::default(), output_files: None };
        store.fill_search_text().await?;
        Ok(store)
    }

    /// Rows written before sessions had a search text get one; a no-op once all have.
    async fn fill_search_text(&self) -> Result<()> {
        let rows = sqlx::query("SELECT id, spec FROM sessions WHERE search_text = ''")
            .fetch_all(&self.pool)
            .await?;
        for row in rows {
            let id: String = row.try_get("id")?;
            let json: String = row.try_get("spec")?;
            let spec = parse_spec(&json).ok_or_else(|| corrupt("spec", &json))?;
            sqlx::query("UPDATE sessions SET search_text = $1 WHERE id = $2")
                .bind(search_text(&id, &spec))
                .bind(&id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Keeps the bytes of stored output in files under `dir` (local mode: one process owns
    /// them) instead of in rows. Files no session's output state names any more (a delete that
    /// stopped between its commit and the file) are removed.
    pub async fn with_output_files(mut self, dir: &std::path::Path) -> Result<Self> {
        let files = crate::output_files::OutputFiles::open(dir)?;
        let held: std::collections::HashSet<String> =
            sqlx::query("SELECT session_id FROM session_output_state")
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get("session_id"))
                .collect::<std::result::Result<_, _>>()?;
        for id in files.names()? {
            if !held.contains(&id) {
                files.remove(&id).await?;
            }
        }
        self.output_files = Some(std::sync::Arc::new(files));
        Ok(self)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // --- API keys -------------------------------------------------------------------------

    pub async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, role, secret_hash, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(key.role.as_str())
        .bind(&key.secret_hash)
        .bind(key.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn count_api_keys(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys").fetch_one(&self.pool).await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    pub async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query(
            "SELECT id, name, role, secret_hash, created_at, revoked_at FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| key_from_row(&r)).transpose()
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(
            "SELECT id, name, role, secret_hash, created_at, revoked_at FROM api_keys \
             ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Revokes a key; false when no such unrevoked key exists.
    /// Revokes key `id`, unless it is the last admin key standing.
    pub async fn revoke_api_key(&self, id: &str) -> Result<KeyChange> {
        self.change_key(
            id,
            "UPDATE api_keys SET revoked_at = $3 WHERE id = $1",
            Role::Viewer,
            now(),
        )
        .await
    }

    /// Gives key `id` the role `role`, unless that leaves no admin key standing.
    pub async fn set_api_key_role(&self, id: &str, role: Role) -> Result<KeyChange> {
        let update = "UPDATE api_keys SET role = $2 WHERE id = $1 AND $3 = $3";
        self.change_key(id, update, role, now()).await
    }

    /// Runs `update` (binding $1 id, $2 the role, $3 the time) on a standing key, but never so
    /// that no admin key stands. On PostgreSQL the standing admin keys are locked first, so two
    /// changes at once cannot each leave the other the last; SQLite runs one write at a time.
    async fn change_key(&self, id: &str, update: &str, role: Role, t: i64) -> Result<KeyChange> {
        let guarded = format!(
            "{update} AND revoked_at IS NULL AND (role <> 'admin' OR $2 = 'admin' OR \
             (SELECT COUNT(*) FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL) > 1)"
        );
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query(
                "SELECT id FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL FOR UPDATE",
            )
            .fetch_all(&mut *tx)
            .await?;
        }
        let done =
            sqlx::query(&guarded).bind(id).bind(role.as_str()).bind(t).execute(&mut *tx).await?;
        tx.commit().await?;
        if done.rows_affected() == 1 {
            return Ok(KeyChange::Done);
        }
        Ok(match self.get_api_key(id).await? {
            Some(k) if k.revoked_at.is_none() && k.role == Role::Admin => KeyChange::LastAdmin,
            _ => KeyChange::NotFound,
        })
    }

    // --- terminal token ids ---------------------------------------------------------------

    /// Consumes a token id: true for exactly one caller, however many race. The primary key
    /// decides, in one statement; there is no read-then-write window.
    /// Records a console login; expired ones go at the same time.
    pub async fn insert_console_session(&self, login: &ConsoleSession) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(now())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (secret_hash, key_id, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&login.secret_hash)
        .bind(&login.key_id)
        .bind(&login.csrf_token)
        .bind(login.created_at)
        .bind(login.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The console login whose cookie secret hashes to `secret_hash`, unless it has expired.
    pub async fn console_session(&self, secret_hash: &str) -> Result<Option<ConsoleSession>> {
        let row = sqlx::query(
            "SELECT secret_hash, key_id, csrf_token, created_at, expires_at FROM console_sessions \
             WHERE secret_hash = $1 AND expires_at > $2",
        )
        .bind(secret_hash)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConsoleSession {
                secret_hash: r.try_get("secret_hash")?,
                key_id: r.try_get("key_id")?,
                csrf_token: r.try_get("csrf_token")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    pub async fn delete_console_session(&self, secret_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE secret_hash = $1")
            .bind(secret_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn consume_jti(&self, jti: &str, expires_at: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO used_jtis (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether a token id was consumed (and is still remembered).
    pub async fn jti_used(&self, jti: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS used FROM used_jtis WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Forgets consumed ids whose tokens can no longer be accepted at `at`: past their expiry
    /// and the clock leeway verifiers grant on it. One forgotten sooner could be replayed.
    pub async fn prune_jtis(&self, at: i64) -> Result<u64> {
        let leeway = cliscale_core::token::LEEWAY_SECS as i64;
        let done = sqlx::query("DELETE FROM used_jtis WHERE expires_at < $1")
            .bind(at - leeway)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    // --- sessions -------------------------------------------------------------------------

    pub async fn insert_session(&self, id: &str, owner: &str, spec: &SessionSpec) -> Result<()> {
        self.insert_session_with(id, owner, spec, &Origin::default(), "").await.map(|_| ())
    }

    /// Inserts session `id`, unless `owner` made one with `idempotency_key` already: then that
    /// one's id. The key and the session are written in one transaction, so a crash leaves
    /// both or neither.
    pub async fn create_session(
        &self,
        id: &str,
        owner: &str,
        spec: &SessionSpec,
        origin: &Origin,
        idempotency_key: Option<&str>,
    ) -> Result<Created> {
        let Some(key) = idempotency_key else {
            self.insert_session_with(id, owner, spec, origin, "").await?;
            return Ok(Created::New);
        };
        let mut tx = self.pool.begin().await?;
        // Concurrent retries wait here on the primary key; the one that loses reads the winner.
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (owner, idem_key, session_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (owner, idem_key) DO NOTHING",
        )
        .bind(owner)
        .bind(key)
        .bind(id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            let row = sqlx::query(
                "SELECT session_id FROM idempotency_keys WHERE owner = $1 AND idem_key = $2",
            )
            .bind(owner)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
            return Ok(Created::Existing(row.try_get("session_id")?));
        }
        Self::insert_in(&mut tx, id, owner, spec, origin, "").await?;
        tx.commit().await?;
        self.changed.notify_waiters();
        Ok(Created::New)
    }

    /// Inserts the session unless its id exists (idempotent, for several writers mirroring the
    /// same source). Returns whether it was inserted.
    pub async fn insert_session_if_absent(
        &self,
        id: &str,
        owner: &str,
        spec: &SessionSpec,
    ) -> Result<bool> {
        self.insert_run(id, owner, spec, &Origin::default()).await
    }

    /// Inserts a session made by a template, schedule, trigger or retry, unless its id exists:
    /// runs have deterministic ids, so a second scheduler deciding the same run makes nothing.
    /// Returns whether it was inserted.
    pub async fn insert_run(
        &self,
        id: &str,
        owner: &str,
        spec: &SessionSpec,
        origin: &Origin,
    ) -> Result<bool> {
        self.insert_session_with(id, owner, spec, origin, " ON CONFLICT (id) DO NOTHING").await
    }

    async fn insert_session_with(
        &self,
        id: &str,
        owner: &str,
        spec: &SessionSpec,
        origin: &Origin,
        on_conflict: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let inserted = Self::insert_in(&mut tx, id, owner, spec, origin, on_conflict).await?;
        tx.commit().await?;
        if inserted {
            self.changed.notify_waiters();
        }
        Ok(inserted)
    }

    async fn insert_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
        owner: &str,
        spec: &SessionSpec,
        origin: &Origin,
        on_conflict: &str,
    ) -> Result<bool> {
        let t = now();
        let spec_json =
            serde_json::to_string(spec).map_err(|e| ApiError::Internal(e.to_string()))?;
        let change = Self::next_change(tx).await?;
        let done = sqlx::query(&format!(
            "INSERT INTO sessions (id, owner, spec, phase, created_at, updated_at, change_seq, \
             search_text, origin, template, schedule, retry_pending) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12){on_conflict}"
        ))
        .bind(id)
        .bind(owner)
        .bind(spec_json)
        .bind(SessionPhase::Pending.as_str())
        .bind(t)
        .bind(t)
        .bind(change)
        .bind(search_text(id, spec))
        .bind(serde_json::to_string(origin).map_err(|e| ApiError::Internal(e.to_string()))?)
        .bind(origin.template.clone())
        .bind(origin.schedule.clone())
        .bind(i64::from(origin.retry.is_some()))
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(&format!("{SESSION_COLUMNS} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| session_from_row(&r)).transpose()
    }

    pub async fn list_sessions(&self, q: &SessionQuery) -> Result<Vec<SessionRecord>> {
        let found = self.query_sessions(q, None).await?;
        Ok(found.into_iter().map(|(_, s)| s).collect())
    }

    /// The sessions matching `q` (its `after` aside) that changed after feed position
    /// `changed_after`, oldest change first, each with its position.
    pub async fn session_changes(
        &self,
        q: &SessionQuery,
        changed_after: i64,
    ) -> Result<Vec<(i64, SessionRecord)>> {
        self.query_sessions(q, Some(changed_after)).await
    }

    /// The feed's position now: the last change committed.
    pub async fn feed_head(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM session_feed_seq WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    /// Resolves after the next session write this process commits.
    pub fn changed(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// The next feed position, taken inside the writing transaction: the counter's row stays
    /// locked to the commit, so positions follow commit order.
    async fn next_change(conn: &mut sqlx::AnyConnection) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE session_feed_seq SET value = value + 1 WHERE id = 1 RETURNING value",
        )
        .fetch_one(conn)
        .await?;
        Ok(row.try_get("value")?)
    }

    async fn query_sessions(
        &self,
        q: &SessionQuery,
        changed_after: Option<i64>,
    ) -> Result<Vec<(i64, SessionRecord)>> {
        let mut sql = format!("{SESSION_COLUMNS} WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if q.phase.is_some() {
            sql += &format!(" AND phase = {}", next());
        }
        if q.owner.is_some() {
            sql += &format!(" AND owner = {}", next());
        }
        if q.created_after.is_some() {
            sql += &format!(" AND created_at >= {}", next());
        }
        if q.created_before.is_some() {
            sql += &format!(" AND created_at < {}", next());
        }
        if q.text.is_some() {
            sql += &format!(" AND search_text LIKE {} ESCAPE '\\'", next());
        }
        if changed_after.is_some() {
            sql += &format!(" AND change_seq > {} ORDER BY change_seq", next());
        } else if q.after.is_some() {
            let (a, b, c) = (next(), next(), next());
            sql += &format!(" AND (created_at < {a} OR (created_at = {b} AND id < {c}))");
        }
        if changed_after.is_none() {
            sql += " ORDER BY created_at DESC, id DESC";
        }
        sql += &format!(" LIMIT {}", next());
        let mut query = sqlx::query(&sql);
        if let Some(phase) = q.phase {
            query = query.bind(phase.as_str());
        }
        if let Some(owner) = &q.owner {
            query = query.bind(owner.clone());
        }
        if let Some(t) = q.created_after {
            query = query.bind(t);
        }
        if let Some(t) = q.created_before {
            query = query.bind(t);
        }
        if let Some(pattern) = &q.text {
            query = query.bind(pattern.clone());
        }
        if let Some(position) = changed_after {
            query = query.bind(position);
        } else if let Some((t, id)) = &q.after {
            query = query.bind(*t).bind(*t).bind(id.clone());
        }
        let rows = query.bind(q.limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>("change_seq")?, session_from_row(r)?)))
            .collect()
    }

    /// Applies an observed change, atomically: in one transaction that first takes the row's
    /// write lock, so concurrent updates (several replicas, the executor and a cancel) apply one
    /// after the other and a finished session never changes phase again. Returns whether the
    /// update applied.
    pub async fn update_status(&self, id: &str, update: &StatusUpdate) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // The lock first (a row lock on PostgreSQL, the database's write lock on SQLite): the
        // read below then sees every update committed before it, and none can slip in after.
        let locked = sqlx::query("UPDATE sessions SET updated_at = updated_at WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            return Ok(false);
        }
        let row = sqlx::query(&format!("{SESSION_COLUMNS} WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let current = session_from_row(&row)?;
        let Some(next) = apply_update(&current, update, now()) else { return Ok(false) };
        let change = Self::next_change(&mut tx).await?;
        sqlx::query(
            "UPDATE sessions SET phase = $1, exit_code = $2, reason = $3, message = $4, \
             runner_addr = $5, started_at = $6, finished_at = $7, updated_at = $8, \
             change_seq = $9 WHERE id = $10",
        )
        .bind(next.phase.as_str())
        .bind(next.exit_code)
        .bind(next.reason.map(reason_str))
        .bind(next.message.clone())
        .bind(next.runner_addr.clone())
        .bind(next.started_at)
        .bind(next.finished_at)
        .bind(next.updated_at)
        .bind(change)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if next.phase != current.phase {
            let message = format!("{} -> {}", current.phase, next.phase);
            let entry = NewEvent::about(&current, "phase", message);
            Self::insert_entry(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        self.changed.notify_waiters();
        Ok(true)
    }

    /// Deletes the session with everything kept for it: its events and its stored output.
    pub async fn delete_session(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for table in [
            "session_events",
            "session_output",
            "session_output_state",
            "session_resizes",
            "idempotency_keys",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE session_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM sessions WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        if let Some(files) = &self.output_files {
            files.remove(id).await?;
        }
        Ok(())
    }

    /// Sessions that were not finished, for recovery after a restart.
    pub async fn unfinished_sessions(&self) -> Result<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!(
            "{SESSION_COLUMNS} WHERE phase IN ('Pending', 'Starting', 'Running')"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Finished sessions whose TTL has passed at `at`.
    pub async fn expired_sessions(&self, at: i64) -> Result<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!("{SESSION_COLUMNS} WHERE finished_at IS NOT NULL"))
            .fetch_all(&self.pool)
            .await?;
        let all: Vec<SessionRecord> = rows.iter().map(session_from_row).collect::<Result<_>>()?;
        Ok(all
            .into_iter()
            .filter(|s| {
                let ttl = i64::from(s.spec.ttl_seconds_after_finished);
                s.finished_at.is_some_and(|f| f + ttl <= at)
            })
            .collect())
    }

    // --- event log ------------------------------------------------------------------------

    pub async fn append_event(&self, session_id: &str, kind: &str, message: &str) -> Result<()> {
        let entry = NewEvent {
            session: Some(session_id.into()),
            kind: kind.into(),
            message: message.into(),
            ..Default::default()
        };
        self.log(&entry).await
    }

    /// Adds an entry to the event log.
    pub async fn log(&self, entry: &NewEvent) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        Self::insert_entry(&mut conn, entry).await
    }

    async fn insert_entry(conn: &mut sqlx::AnyConnection, entry: &NewEvent) -> Result<()> {
        // One counter orders the log: two entries in the same second keep their order.
        let seq = Self::next_change(&mut *conn).await?;
        sqlx::query(
            "INSERT INTO session_events (id, session_id, at, kind, message, seq, template, \
             schedule, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(format!("{seq:020}-{}", uuid::Uuid::new_v4()))
        .bind(entry.session.clone().unwrap_or_default())
        .bind(now())
        .bind(&entry.kind)
        .bind(&entry.message)
        .bind(seq)
        .bind(entry.template.clone())
        .bind(entry.schedule.clone())
        .bind(entry.actor.clone())
        .execute(conn)
        .await?;
        Ok(())
    }

    /// A page of the event log: entries matching `q`, in its order, after its cursor.
    pub async fn log_page(&self, q: &LogQuery) -> Result<Vec<LogRow>> {
        let mut sql = String::from(
            "SELECT seq, id, at, kind, session_id, template, schedule, actor, message \
             FROM session_events WHERE 1 = 1",
        );
        let mut binds: Vec<LogBind> = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        for (column, value) in [
            ("session_id", &q.session),
            ("template", &q.template),
            ("schedule", &q.schedule),
            ("kind", &q.kind),
            ("actor", &q.actor),
        ] {
            if let Some(v) = value {
                sql += &format!(" AND {column} = {}", next());
                binds.push(LogBind::Text(v.clone()));
            }
        }
        if let Some(owner) = &q.visible_to {
            // An operator: entries about its own sessions, or made by it.
            let (a, b) = (next(), next());
            sql += &format!(
                " AND (actor = {a} OR session_id IN (SELECT id FROM sessions WHERE owner = {b}))"
            );
            binds.push(LogBind::Text(owner.clone()));
            binds.push(LogBind::Text(owner.clone()));
        }
        if let Some(t) = q.after {
            sql += &format!(" AND at >= {}", next());
            binds.push(LogBind::Int(t));
        }
        if let Some(t) = q.before {
            sql += &format!(" AND at < {}", next());
            binds.push(LogBind::Int(t));
        }
        let (cmp, order) = if q.descending { ("<", "DESC") } else { (">", "ASC") };
        if let Some((seq, id)) = &q.from {
            let (a, b, c) = (next(), next(), next());
            sql += &format!(" AND (seq {cmp} {a} OR (seq = {b} AND id {cmp} {c}))");
            binds.push(LogBind::Int(*seq));
            binds.push(LogBind::Int(*seq));
            binds.push(LogBind::Text(id.clone()));
        }
        sql += &format!(" ORDER BY seq {order}, id {order} LIMIT {}", next());
        binds.push(LogBind::Int(q.limit));
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = match bind {
                LogBind::Text(v) => query.bind(v),
                LogBind::Int(v) => query.bind(v),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let session: String = r.try_get("session_id")?;
                Ok(LogRow {
                    seq: r.try_get("seq")?,
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    session: (!session.is_empty()).then_some(session),
                    template: r.try_get("template")?,
                    schedule: r.try_get("schedule")?,
                    actor: r.try_get("actor")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }

    pub async fn events(&self, session_id: &str) -> Result<Vec<(i64, String, String)>> {
        let rows = sqlx::query(
            "SELECT at, kind, message FROM session_events WHERE session_id = $1 ORDER BY seq, id",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("at")?, r.try_get("kind")?, r.try_get("message")?)))
            .collect()
    }
}

/// The row a session has after `update` at time `t`, or `None` when the update may not apply:
/// a finished session never changes phase again. Pure.
pub fn apply_update(
    current: &SessionRecord,
    update: &StatusUpdate,
    t: i64,
) -> Option<SessionRecord> {
    if current.phase.is_finished() && update.phase.is_some_and(|p| p != current.phase) {
        return None;
    }
    let phase = update.phase.unwrap_or(current.phase);
    Some(SessionRecord {
        phase,
        exit_code: update.exit_code.or(current.exit_code),
        reason: update.reason.or(current.reason),
        message: update.message.clone().or_else(|| current.message.clone()),
        runner_addr: update.runner_addr.clone().or_else(|| current.runner_addr.clone()),
        started_at: current.started_at.or((phase == SessionPhase::Running).then_some(t)),
        finished_at: current.finished_at.or(phase.is_finished().then_some(t)),
        updated_at: t,
        ..current.clone()
    })
}

/// What a session's search matches: its id and command, lowercased. Pure.
fn search_text(id: &str, spec: &SessionSpec) -> String {
    format!("{id}\n{}", spec.command).to_lowercase()
}

/// The `LIKE` pattern of a search: the text lowercased, anywhere, its wildcards escaped with
/// `\` so they match themselves. Pure.
pub fn search_pattern(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

const SESSION_COLUMNS: &str = "SELECT id, owner, spec, phase, exit_code, reason, message, \
    runner_addr, created_at, started_at, finished_at, updated_at, change_seq, origin FROM sessions";

fn reason_str(reason: TerminalReason) -> String {
    serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn corrupt(what: &str, value: &str) -> ApiError {
    ApiError::Internal(format!("stored {what} {value:?} is not valid"))
}

/// A stored spec: today's form, or the flat snake_case form rows were written in before the
/// session spec was shared with the CommandSession (still read, so no stored session is lost).
fn parse_spec(json: &str) -> Option<SessionSpec> {
    #[derive(serde::Deserialize)]
    struct Legacy {
        code_url: Option<String>,
        code_checksum_sha256: Option<String>,
        command: String,
        prompt: Option<String>,
        install_cmd: Option<String>,
        env: std::collections::BTreeMap<String, String>,
        cols: u16,
        rows: u16,
        timeout_seconds: Option<u32>,
        ttl_seconds: u32,
    }
    if let Ok(spec) = serde_json::from_str::<SessionSpec>(json) {
        return Some(spec);
    }
    let old: Legacy = serde_json::from_str(json).ok()?;
    Some(SessionSpec {
        code: old.code_url.map(|url| CodeSpec { url, checksum_sha256: old.code_checksum_sha256 }),
        prompt: old.prompt,
        install_command: old.install_cmd,
        env: old
            .env
            .into_iter()
            .map(|(name, value)| EnvVar { name, value, secret: false })
            .collect(),
        cols: old.cols,
        rows: old.rows,
        timeout_seconds: old.timeout_seconds,
        ttl_seconds_after_finished: old.ttl_seconds,
        ..SessionSpec::new(old.command)
    })
}

fn key_from_row(r: &sqlx::any::AnyRow) -> Result<ApiKeyRecord> {
    let role: String = r.try_get("role")?;
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| corrupt("role", &role))?,
        secret_hash: r.try_get("secret_hash")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

pub(crate) fn session_from_row(r: &sqlx::any::AnyRow) -> Result<SessionRecord> {
    let spec: String = r.try_get("spec")?;
    let phase: String = r.try_get("phase")?;
    let reason: Option<String> = r.try_get("reason")?;
    Ok(SessionRecord {
        id: r.try_get("id")?,
        owner: r.try_get("owner")?,
        spec: parse_spec(&spec).ok_or_else(|| corrupt("spec", &spec))?,
        phase: phase_from_str(&phase).ok_or_else(|| corrupt("phase", &phase))?,
        exit_code: r.try_get("exit_code")?,
        reason: reason
            .as_deref()
            .map(|s| reason_from_str(s).ok_or_else(|| corrupt("reason", s)))
            .transpose()?,
        message: r.try_get("message")?,
        runner_addr: r.try_get("runner_addr")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        updated_at: r.try_get("updated_at")?,
        origin: {
            let origin: String = r.try_get("origin")?;
            serde_json::from_str(&origin).map_err(|_| corrupt("origin", &origin))?
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_in_the_older_flat_form_still_read() {
        let legacy = r#"{"code_url":"https://example.com/a.zip","code_checksum_sha256":null,
            "command":"make","prompt":"p","install_cmd":"npm ci","env":{"MODE":"ci"},
            "cols":100,"rows":30,"timeout_seconds":60,"ttl_seconds":120}"#;
        let spec = parse_spec(legacy).unwrap();
        assert_eq!(spec.code.as_ref().map(|c| c.url.as_str()), Some("https://example.com/a.zip"));
        assert_eq!(spec.install_command.as_deref(), Some("npm ci"));
        assert_eq!(
            spec.env,
            vec![EnvVar { name: "MODE".into(), value: "ci".into(), secret: false }]
        );
        assert_eq!((spec.cols, spec.rows, spec.timeout_seconds), (100, 30, Some(60)));
        assert_eq!(spec.ttl_seconds_after_finished, 120);
        let current = serde_json::to_string(&spec).unwrap();
        assert_eq!(parse_spec(&current), Some(spec));
        assert_eq!(parse_spec("{}"), None);
    }

    #[test]
    fn a_finished_session_never_changes_phase_again() {
        let spec = SessionSpec::new("true");
        let row = SessionRecord {
            id: "s".into(),
            owner: "k".into(),
            spec,
            phase: SessionPhase::Failed,
            exit_code: Some(3),
            reason: Some(TerminalReason::Exited),
            message: None,
            runner_addr: None,
            created_at: 1,
            started_at: Some(2),
            finished_at: Some(3),
            updated_at: 3,
            origin: Origin::default(),
        };
        let running = StatusUpdate { phase: Some(SessionPhase::Running), ..Default::default() };
        assert_eq!(apply_update(&row, &running, 9), None);
        let note = StatusUpdate { message: Some("more".into()), ..Default::default() };
        let next = apply_update(&row, &note, 9).unwrap();
        assert_eq!(
            (next.phase, next.finished_at, next.updated_at),
            (SessionPhase::Failed, Some(3), 9)
        );
        let starting = SessionRecord {
            phase: SessionPhase::Starting,
            started_at: None,
            finished_at: None,
            ..row
        };
        let now_running = apply_update(&starting, &running, 7).unwrap();
        assert_eq!((now_running.started_at, now_running.finished_at), (Some(7), None));
    }
}
