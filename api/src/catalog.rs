//! The store's definitions: sealed secrets, templates, trigger tokens and schedules, and the
//! sessions they made. Every write that two replicas could race on is a compare-and-set.

use sqlx::Row;

use crate::error::{ApiError, Result};
use crate::model::SessionRecord;
use crate::store::{Store, now};

/// A sealed secret as stored (local mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub name: String,
    pub key_names: Vec<String>,
    pub key_id: String,
    pub nonce: String,
    pub sealed: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A stored template: its spec as the API took it (`cliscale_core::rest::TemplateSpec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRow {
    pub name: String,
    pub generation: i64,
    pub spec: String,
    pub owner: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A trigger token as stored: the SHA-256 of its secret part, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerRow {
    pub id: String,
    pub template: String,
    pub name: String,
    pub secret_hash: String,
    pub params: Vec<String>,
    pub owner: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// A stored schedule: its spec (`cliscale_core::rest::ScheduleSpec`) and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    pub name: String,
    /// Fresh for each schedule of a name, so a schedule made again names its runs anew.
    pub uid: String,
    pub spec: String,
    pub owner: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_considered: i64,
    /// The latest skipped and missed times (JSON of `cliscale_core::rest::NotRun`).
    pub not_run: String,
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| ApiError::Internal(e.to_string()))
}

fn names(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|_| ApiError::Internal(format!("stored list {text:?}")))
}

const SESSION_RUN_COLUMNS: &str = "SELECT id, owner, spec, phase, exit_code, reason, message, \
    runner_addr, created_at, started_at, finished_at, updated_at, change_seq, origin FROM sessions";

impl Store {
    /// The rows of `table` (every one, or the one named `name`), by name, with `columns`.
    async fn named_rows(
        &self,
        table: &str,
        columns: &str,
        name: Option<&str>,
    ) -> Result<Vec<sqlx::any::AnyRow>> {
        let filter = if name.is_some() { " WHERE name = $1" } else { "" };
        let sql = format!("SELECT {columns} FROM {table}{filter} ORDER BY name");
        let mut query = sqlx::query(&sql);
        if let Some(name) = name {
            query = query.bind(name.to_owned());
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    // --- secrets --------------------------------------------------------------------------

    /// Writes a sealed secret, replacing one of its name.
    pub async fn put_secret_row(&self, row: &SecretRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO secrets (name, key_names, key_id, nonce, sealed, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET \
             key_names = excluded.key_names, key_id = excluded.key_id, nonce = excluded.nonce, \
             sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(&row.name)
        .bind(json(&row.key_names)?)
        .bind(&row.key_id)
        .bind(&row.nonce)
        .bind(&row.sealed)
        .bind(row.created_at)
        .bind(row.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn secret_row(&self, name: &str) -> Result<Option<SecretRow>> {
        Ok(self.secret_query(Some(name)).await?.pop())
    }

    pub async fn secret_rows(&self) -> Result<Vec<SecretRow>> {
        self.secret_query(None).await
    }

    async fn secret_query(&self, name: Option<&str>) -> Result<Vec<SecretRow>> {
        let columns = "name, key_names, key_id, nonce, sealed, created_at, updated_at";
        let rows = self.named_rows("secrets", columns, name).await?;
        rows.iter()
            .map(|r| {
                Ok(SecretRow {
                    name: r.try_get("name")?,
                    key_names: names(&r.try_get::<String, _>("key_names")?)?,
                    key_id: r.try_get("key_id")?,
                    nonce: r.try_get("nonce")?,
                    sealed: r.try_get("sealed")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    pub async fn delete_secret_row(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM secrets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The templates whose sessions take a variable from secret `name`.
    pub async fn templates_using_secret(&self, name: &str) -> Result<Vec<String>> {
        let mut using = Vec::new();
        for row in self.templates().await? {
            let spec: cliscale_core::rest::TemplateSpec = serde_json::from_str(&row.spec)
                .map_err(|_| ApiError::Internal(format!("stored template {:?}", row.name)))?;
            let refs = spec.session.secret_env.unwrap_or_default();
            if refs.values().any(|r| r.secret == name) {
                using.push(row.name);
            }
        }
        Ok(using)
    }

    // --- templates ------------------------------------------------------------------------

    /// Inserts a template at generation 1; false if one of its name exists.
    pub async fn insert_template(&self, name: &str, spec: &str, owner: &str) -> Result<bool> {
        let t = now();
        let done = sqlx::query(
            "INSERT INTO templates (name, generation, spec, owner, created_at, updated_at) \
             VALUES ($1, 1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(spec)
        .bind(owner)
        .bind(t)
        .bind(t)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a template's spec, bumping its generation; false if there is none.
    pub async fn update_template(&self, name: &str, spec: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE templates SET spec = $1, generation = generation + 1, updated_at = $2 \
             WHERE name = $3",
        )
        .bind(spec)
        .bind(now())
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn template(&self, name: &str) -> Result<Option<TemplateRow>> {
        Ok(self.template_query(Some(name)).await?.pop())
    }

    pub async fn templates(&self) -> Result<Vec<TemplateRow>> {
        self.template_query(None).await
    }

    async fn template_query(&self, name: Option<&str>) -> Result<Vec<TemplateRow>> {
        let columns = "name, generation, spec, owner, created_at, updated_at";
        let rows = self.named_rows("templates", columns, name).await?;
        rows.iter()
            .map(|r| {
                Ok(TemplateRow {
                    name: r.try_get("name")?,
                    generation: r.try_get("generation")?,
                    spec: r.try_get("spec")?,
                    owner: r.try_get("owner")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// Deletes a template and revokes its trigger tokens.
    pub async fn delete_template(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM templates WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE trigger_tokens SET revoked_at = $1 WHERE template = $2 AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Brings template `name` to `spec` as the cluster has it (a CommandTemplate): made if
    /// absent (owned by `owner`), replaced if it differs. Returns whether anything changed.
    pub async fn sync_template(&self, name: &str, spec: &str, owner: &str) -> Result<bool> {
        match self.template(name).await? {
            None => self.insert_template(name, spec, owner).await,
            Some(row) if row.spec != spec => self.update_template(name, spec).await,
            Some(_) => Ok(false),
        }
    }

    // --- trigger tokens -------------------------------------------------------------------

    pub async fn insert_trigger(&self, row: &TriggerRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO trigger_tokens (id, template, name, secret_hash, params, owner, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.id)
        .bind(&row.template)
        .bind(&row.name)
        .bind(&row.secret_hash)
        .bind(json(&row.params)?)
        .bind(&row.owner)
        .bind(row.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn triggers(&self, template: &str) -> Result<Vec<TriggerRow>> {
        self.trigger_query("template", template).await
    }

    pub async fn trigger(&self, id: &str) -> Result<Option<TriggerRow>> {
        Ok(self.trigger_query("id", id).await?.pop())
    }

    async fn trigger_query(&self, column: &str, value: &str) -> Result<Vec<TriggerRow>> {
        let rows = sqlx::query(&format!(
            "SELECT id, template, name, secret_hash, params, owner, created_at, revoked_at, \
             last_used_at FROM trigger_tokens WHERE {column} = $1 ORDER BY created_at, id"
        ))
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TriggerRow {
                    id: r.try_get("id")?,
                    template: r.try_get("template")?,
                    name: r.try_get("name")?,
                    secret_hash: r.try_get("secret_hash")?,
                    params: names(&r.try_get::<String, _>("params")?)?,
                    owner: r.try_get("owner")?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                })
            })
            .collect()
    }

    /// Revokes a template's trigger token; false if it has none of that id standing.
    pub async fn revoke_trigger(&self, template: &str, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE trigger_tokens SET revoked_at = $1 \
             WHERE id = $2 AND template = $3 AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(id)
        .bind(template)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn touch_trigger(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE trigger_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // --- schedules ------------------------------------------------------------------------

    /// Inserts a schedule that starts considering times after `t`; false if one of its name
    /// exists.
    pub async fn insert_schedule(
        &self,
        name: &str,
        spec: &str,
        owner: &str,
        t: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO schedules (name, uid, spec, owner, created_at, updated_at, \
             last_considered) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(uuid::Uuid::new_v4().simple().to_string())
        .bind(spec)
        .bind(owner)
        .bind(t)
        .bind(t)
        .bind(t)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Brings schedule `name` to `spec` as the cluster has it (a CommandSchedule): made if
    /// absent (owned by `owner`, considering times from now), replaced if it differs.
    pub async fn sync_schedule(&self, name: &str, spec: &str, owner: &str) -> Result<bool> {
        match self.schedule(name).await? {
            None => self.insert_schedule(name, spec, owner, now()).await,
            Some(row) if row.spec != spec => self.update_schedule(name, spec).await,
            Some(_) => Ok(false),
        }
    }

    pub async fn update_schedule(&self, name: &str, spec: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE schedules SET spec = $1, updated_at = $2 WHERE name = $3")
            .bind(spec)
            .bind(now())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn schedule(&self, name: &str) -> Result<Option<ScheduleRow>> {
        Ok(self.schedule_query(Some(name)).await?.pop())
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleRow>> {
        self.schedule_query(None).await
    }

    async fn schedule_query(&self, name: Option<&str>) -> Result<Vec<ScheduleRow>> {
        let columns = "name, uid, spec, owner, created_at, updated_at, last_considered, not_run";
        let rows = self.named_rows("schedules", columns, name).await?;
        rows.iter()
            .map(|r| {
                Ok(ScheduleRow {
                    name: r.try_get("name")?,
                    uid: r.try_get("uid")?,
                    spec: r.try_get("spec")?,
                    owner: r.try_get("owner")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                    last_considered: r.try_get("last_considered")?,
                    not_run: r.try_get("not_run")?,
                })
            })
            .collect()
    }

    pub async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM schedules WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves a schedule's `last_considered` from `from` to `to`, only if nobody moved it first
    /// (another replica, a restart): whoever wins acts on the times in between.
    pub async fn advance_schedule(
        &self,
        uid: &str,
        from: i64,
        to: i64,
        not_run: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE schedules SET last_considered = $1, not_run = $2 \
             WHERE uid = $3 AND last_considered = $4",
        )
        .bind(to)
        .bind(not_run)
        .bind(uid)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    // --- the sessions they made -----------------------------------------------------------

    /// The sessions whose `column` (template or schedule) is `name`, newest first.
    pub async fn runs_of(
        &self,
        column: RunsOf,
        name: &str,
        limit: i64,
    ) -> Result<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!(
            "{SESSION_RUN_COLUMNS} WHERE {} = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
            column.column()
        ))
        .bind(name)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::store::session_from_row).collect()
    }

    /// The unfinished sessions whose `column` is `name`.
    pub async fn active_runs(&self, column: RunsOf, name: &str) -> Result<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!(
            "{SESSION_RUN_COLUMNS} WHERE {} = $1 AND phase IN ('Pending', 'Starting', 'Running')",
            column.column()
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::store::session_from_row).collect()
    }

    /// Finished sessions whose ending has yet to be weighed against their retry policy.
    pub async fn retry_candidates(&self) -> Result<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!(
            "{SESSION_RUN_COLUMNS} WHERE retry_pending = 1 AND finished_at IS NOT NULL"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::store::session_from_row).collect()
    }

    /// Marks a session's ending as weighed; false if someone did first.
    pub async fn settle_retry(&self, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sessions SET retry_pending = 0 WHERE id = $1 AND retry_pending = 1",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Which definition's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsOf {
    Template,
    Schedule,
}

impl RunsOf {
    fn column(self) -> &'static str {
        match self {
            Self::Template => "template",
            Self::Schedule => "schedule",
        }
    }
}
