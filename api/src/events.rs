//! `GET /api/events`: the event log of everything sessions, templates, triggers, schedules,
//! retries and secrets did, filtered, ordered by one monotonic sequence, paged with cursors.

use axum::extract::{Query, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cliscale_core::rest::{EventQuery, LogEntry, LogPage};

use crate::error::{ApiError, Result};
use crate::keys::Role;
use crate::model::rfc3339;
use crate::routes::{Caller, parse_time};
use crate::store::{LogQuery, LogRow};

const MAX_PAGE: i64 = 500;

fn bad_cursor() -> ApiError {
    ApiError::bad_request("invalid_cursor", "cursor is not one this API handed out")
}

fn encode(row: &LogRow) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", row.seq, row.id))
}

fn decode(cursor: &str) -> Result<(i64, String)> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad_cursor())?;
    let text = String::from_utf8(raw).map_err(|_| bad_cursor())?;
    let (seq, id) = text.split_once(':').ok_or_else(bad_cursor)?;
    Ok((seq.parse().map_err(|_| bad_cursor())?, id.to_owned()))
}

/// The store query for `params`, as `caller` may see it: an operator sees what concerns its
/// own sessions or what it did itself. Pure.
pub fn log_query(caller: &Caller, params: EventQuery) -> Result<LogQuery> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1..={MAX_PAGE}"),
        ));
    }
    let descending = match params.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("order must be asc or desc, not {other:?}"),
            ));
        }
    };
    Ok(LogQuery {
        session: params.session,
        template: params.template,
        schedule: params.schedule,
        kind: params.kind,
        actor: params.actor,
        visible_to: (caller.role == Role::Operator).then(|| caller.key_id.clone()),
        after: params.after.as_deref().map(|v| parse_time("after", v)).transpose()?,
        before: params.before.as_deref().map(|v| parse_time("before", v)).transpose()?,
        descending,
        from: params.cursor.as_deref().map(decode).transpose()?,
        limit: limit + 1,
    })
}

#[utoipa::path(get, path = "/api/events", tag = "events",
    summary = "The event log, filtered and paged",
    description = "Entries in the order of their `seq` (ascending unless order=desc). Types: created, phase, cancel, secret_referenced, scheduled, skipped, missed, retried, retries_stopped, trigger_used, and the definitions' own (template_created, schedule_updated, secret_deleted, …).",
    params(EventQuery),
    responses((status = 200, description = "A page", body = LogPage),
        (status = 400, description = "invalid_query or invalid_cursor", body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<crate::routes::AppState>,
    caller: Caller,
    params: std::result::Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<LogPage>> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let query = log_query(&caller, params)?;
    let mut rows = state.store.log_page(&query).await?;
    let more = rows.len() as i64 >= query.limit;
    rows.truncate((query.limit - 1) as usize);
    let next_cursor = more.then(|| rows.last().map(encode)).flatten();
    let items = rows
        .into_iter()
        .map(|r| LogEntry {
            seq: r.seq,
            at: rfc3339(r.at),
            kind: r.kind,
            session: r.session,
            template: r.template,
            schedule: r.schedule,
            actor: r.actor,
            message: r.message,
        })
        .collect();
    Ok(axum::Json(LogPage { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role) -> Caller {
        Caller { key_id: "k1".into(), role }
    }

    #[test]
    fn operators_see_only_their_own_and_bad_queries_are_named() {
        let q = log_query(&caller(Role::Operator), EventQuery::default()).unwrap();
        assert_eq!(q.visible_to.as_deref(), Some("k1"));
        assert!(
            log_query(&caller(Role::Viewer), EventQuery::default()).unwrap().visible_to.is_none()
        );
        let bad = |q: EventQuery| log_query(&caller(Role::Admin), q).unwrap_err().code();
        assert_eq!(
            bad(EventQuery { order: Some("up".into()), ..Default::default() }),
            "invalid_query"
        );
        assert_eq!(bad(EventQuery { limit: Some(0), ..Default::default() }), "invalid_query");
        assert_eq!(
            bad(EventQuery { cursor: Some("zz".into()), ..Default::default() }),
            "invalid_cursor"
        );
        assert_eq!(
            bad(EventQuery { after: Some("soon".into()), ..Default::default() }),
            "invalid_query"
        );
    }

    #[test]
    fn cursors_round_trip() {
        let row = LogRow {
            seq: 42,
            id: "00000000000000000042-x".into(),
            at: 0,
            kind: "created".into(),
            session: None,
            template: None,
            schedule: None,
            actor: None,
            message: String::new(),
        };
        assert_eq!(decode(&encode(&row)).unwrap(), (42, row.id));
    }
}
