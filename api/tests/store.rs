//! The store under concurrent writers, on SQLite and PostgreSQL.

use std::sync::Arc;

use cliscale_api::model::SessionSpec;
use cliscale_api::store::{SessionQuery, StatusUpdate, Store, search_pattern};
use cliscale_core::{SessionPhase, TerminalReason};
use cliscale_testkit::postgres::fresh_postgres;

const SESSIONS: usize = 40;

/// Two writers race on every session: one records its end (Failed), the other a late
/// observation that it runs (as a slow replica or a stale event would). Whichever comes first,
/// the session ends Failed, and its event log never shows it leaving a finished phase.
async fn concurrent_updates_never_undo_a_finished_phase(store: Store) {
    let store = Arc::new(store);
    let spec = SessionSpec::new("true");
    for i in 0..SESSIONS {
        store.insert_session(&format!("s{i}"), "k", &spec).await.unwrap();
    }
    let finished = StatusUpdate {
        phase: Some(SessionPhase::Failed),
        exit_code: Some(3),
        reason: Some(TerminalReason::Exited),
        ..Default::default()
    };
    let running = StatusUpdate { phase: Some(SessionPhase::Running), ..Default::default() };
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        for update in [finished.clone(), running.clone()] {
            let (store, id) = (store.clone(), format!("s{i}"));
            tasks.push(tokio::spawn(async move { store.update_status(&id, &update).await }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for i in 0..SESSIONS {
        let id = format!("s{i}");
        let row = store.get_session(&id).await.unwrap().unwrap();
        assert_eq!((row.phase, row.exit_code), (SessionPhase::Failed, Some(3)), "{id}");
        let phases: Vec<String> =
            store.events(&id).await.unwrap().into_iter().map(|(_, _, m)| m).collect();
        assert!(!phases.iter().any(|m| m.starts_with("Failed ->")), "{id}: {phases:?}");
        let ends = phases.iter().filter(|m| m.ends_with("-> Failed")).count();
        assert_eq!(ends, 1, "{id}: {phases:?}");
    }
    // A session that does not exist is no error, and nothing is made for it.
    assert!(!store.update_status("nope", &running).await.unwrap());
    assert!(store.get_session("nope").await.unwrap().is_none());
}

/// A used token id is remembered as long as a verifier could still accept the token: past its
/// `exp` by less than the clock leeway, a replay is still refused after the janitor ran.
#[tokio::test]
async fn a_used_token_stays_used_through_the_clock_leeway() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("jti.db").display());
    let store = Store::connect(&url).await.unwrap();
    let now = cliscale_api::store::now();
    let leeway = cliscale_core::token::LEEWAY_SECS as i64;
    assert!(store.consume_jti("in-leeway", now - leeway / 2).await.unwrap());
    assert!(store.consume_jti("long-gone", now - leeway - 5).await.unwrap());
    assert_eq!(store.prune_jtis(now).await.unwrap(), 1);
    assert!(!store.consume_jti("in-leeway", now - leeway / 2).await.unwrap(), "replayed");
    assert!(store.consume_jti("long-gone", now - leeway - 5).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("store.db").display());
    concurrent_updates_never_undo_a_finished_phase(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_on_postgres() {
    let Some(url) = fresh_postgres().await else { return };
    concurrent_updates_never_undo_a_finished_phase(Store::connect(&url).await.unwrap()).await;
}

/// Gaps declared back to back (the runner's window overflowing again before the store caught
/// up) are kept as one range; the bytes around them are kept exactly.
#[tokio::test]
async fn gaps_declared_back_to_back_are_one_range() {
    use cliscale_api::output::{Output, OutputBackend};
    use cliscale_core::output::AppendQuery;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("output.db").display());
    let store = Store::connect(&url).await.unwrap();
    let output = Output::new(Arc::new(store.clone()), cliscale_api::output::DEFAULT_CAP_BYTES);
    let append = |offset: u64, gap_from: Option<u64>, body: &'static [u8]| {
        let q = AppendQuery { offset, gap_from, ..Default::default() };
        let output = &output;
        async move { output.append("s", &q, bytes::Bytes::from_static(body)).await.unwrap() }
    };
    append(0, None, b"ab").await;
    append(10, Some(2), b"").await;
    append(20, Some(10), b"cd").await;
    append(40, Some(22), b"ef").await;
    assert_eq!(store.gaps("s").await.unwrap(), vec![(2, 20), (22, 40)]);
    assert_eq!(store.state("s").await.unwrap().unwrap().end, 42);
}

/// A session's event log reads in the order it was written, even when every entry lands in the
/// same second (a session that starts, runs and ends at once).
async fn events_read_in_the_order_they_happened(store: Store) {
    store.insert_session("fast", "k", &SessionSpec::new("true")).await.unwrap();
    let phases = [SessionPhase::Starting, SessionPhase::Running, SessionPhase::Succeeded];
    for _ in 0..5 {
        store.append_event("fast", "note", "between").await.unwrap();
    }
    for phase in phases {
        let update = StatusUpdate { phase: Some(phase), ..Default::default() };
        assert!(store.update_status("fast", &update).await.unwrap());
    }
    let log: Vec<String> =
        store.events("fast").await.unwrap().into_iter().map(|(_, _, m)| m).collect();
    let transitions: Vec<&String> = log.iter().filter(|m| m.contains("->")).collect();
    assert_eq!(
        transitions,
        ["Pending -> Starting", "Starting -> Running", "Running -> Succeeded"],
        "{log:?}"
    );
    assert!(log[..5].iter().all(|m| m == "between"), "{log:?}");
}

#[tokio::test]
async fn events_keep_their_order_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("events.db").display());
    events_read_in_the_order_they_happened(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn events_keep_their_order_on_postgres() {
    let Some(url) = fresh_postgres().await else { return };
    events_read_in_the_order_they_happened(Store::connect(&url).await.unwrap()).await;
}

/// A list's `q` matches the id or the command, case-insensitively, and its wildcards match
/// only themselves.
async fn search_matches_id_and_command_literally(store: Store) {
    store.insert_session("a1b2", "k", &SessionSpec::new("Deploy --env prod")).await.unwrap();
    store.insert_session("c3d4", "k", &SessionSpec::new("echo 100% done")).await.unwrap();
    store.insert_session("e5f6", "k", &SessionSpec::new("echo 1000 done_x")).await.unwrap();
    let found = |text: &str| {
        let q = SessionQuery { text: Some(search_pattern(text)), limit: 10, ..Default::default() };
        let store = store.clone();
        async move {
            let mut ids: Vec<String> =
                store.list_sessions(&q).await.unwrap().into_iter().map(|s| s.id).collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(found("deploy").await, ["a1b2"]);
    assert_eq!(found("C3D").await, ["c3d4"]);
    assert_eq!(found("100%").await, ["c3d4"]);
    assert_eq!(found("done_").await, ["e5f6"]);
    assert_eq!(found("echo").await, ["c3d4", "e5f6"]);
    assert!(found("nowhere").await.is_empty());
}

#[tokio::test]
async fn search_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("search.db").display());
    search_matches_id_and_command_literally(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn search_on_postgres() {
    let Some(url) = fresh_postgres().await else { return };
    search_matches_id_and_command_literally(Store::connect(&url).await.unwrap()).await;
}

/// Appends a log of 24 MiB in batches of uneven sizes, some resent in part (a runner retrying
/// after a lost answer), past a 16 MiB cap, and reads it back: the head and the tail byte for
/// byte, one gap between, the tail text from the last bytes. Deleting the session deletes it.
/// Returns the log's bytes for backend-specific checks.
async fn stored_output_is_kept_exactly(store: Store) -> Vec<u8> {
    use cliscale_api::output::{MIN_CAP_BYTES, Output, OutputBackend};
    use cliscale_core::cursor::LogRead;
    use cliscale_core::output::AppendQuery;
    use rand::{Rng, RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut log = vec![0u8; 24 << 20];
    rng.fill_bytes(&mut log);
    let output = Output::new(Arc::new(store.clone()), MIN_CAP_BYTES);
    let mut at = 0usize;
    while at < log.len() {
        let len = rng.gen_range(1..=(1 << 20)).min(log.len() - at);
        // Now and then the batch starts a little before the stored end, as a resend does.
        let from =
            if at > 0 && rng.gen_bool(0.3) { at - rng.gen_range(1..=at.min(4096)) } else { at };
        let q = AppendQuery { offset: from as u64, at_ms: at as u64, ..Default::default() };
        let body = bytes::Bytes::copy_from_slice(&log[from..at + len]);
        output.append("s", &q, body).await.unwrap();
        at += len;
    }
    let closing = AppendQuery { offset: log.len() as u64, closed: true, ..Default::default() };
    output.append("s", &closing, bytes::Bytes::new()).await.unwrap();
    let state = store.state("s").await.unwrap().unwrap();
    assert_eq!(state.end, log.len() as u64);
    assert!(state.closed);
    assert!(state.stored_bytes <= MIN_CAP_BYTES, "{} bytes held", state.stored_bytes);
    let gaps = store.gaps("s").await.unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (gap_from, gap_to) = gaps[0];
    assert!(gap_from >= MIN_CAP_BYTES / 4 && gap_to > gap_from, "{gaps:?}");
    // Everything outside the gap reads back exactly, in reads of at most 1 MiB.
    let mut offset = 0u64;
    let mut read = Vec::new();
    loop {
        match output.read("s", offset, 1 << 20, None).await.unwrap() {
            LogRead::Data { offset: o, data } => {
                assert_eq!(o, offset);
                read.extend_from_slice(&data);
                offset += data.len() as u64;
            }
            LogRead::Gap { from, to } => {
                assert_eq!((from, to), (offset.max(gap_from), gap_to));
                offset = to;
            }
            LogRead::UpToDate { end, closed } => {
                assert!(closed && end == log.len() as u64);
                break;
            }
        }
    }
    let mut kept = log[..gap_from as usize].to_vec();
    kept.extend_from_slice(&log[gap_to as usize..]);
    assert!(read == kept, "stored bytes differ from the log's");
    let tail = output.tail("s", 4096).await.unwrap().unwrap();
    assert_eq!(tail, cliscale_core::output::tail_text(&log[log.len() - 8192..], 4096));
    log
}

async fn deleting_a_session_deletes_its_output(store: &Store) {
    use cliscale_api::output::OutputBackend;
    store.delete_session("s").await.unwrap();
    assert!(store.state("s").await.unwrap().is_none());
    assert!(store.gaps("s").await.unwrap().is_empty());
    assert!(store.segments("s", 0, 1 << 20).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_output_in_sqlite_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("rows.db").display());
    let store = Store::connect(&url).await.unwrap();
    stored_output_is_kept_exactly(store.clone()).await;
    deleting_a_session_deletes_its_output(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_output_in_postgres_rows() {
    let Some(url) = fresh_postgres().await else { return };
    let store = Store::connect(&url).await.unwrap();
    stored_output_is_kept_exactly(store.clone()).await;
    deleting_a_session_deletes_its_output(&store).await;
}

/// Local mode: the bytes are in one file per session, the rows only say where. The cap's
/// eviction gives the evicted span's disk back (a hole), a file no session owns is removed
/// when the store opens, and deleting the session deletes its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_output_in_files() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("files.db").display());
    let files = dir.path().join("output");
    let store = Store::connect(&url).await.unwrap().with_output_files(&files).await.unwrap();
    let log = stored_output_is_kept_exactly(store.clone()).await;
    let file = files.join("s.log");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    // The database holds no output bytes: it stays far smaller than what it indexes.
    let db = std::fs::metadata(dir.path().join("files.db")).unwrap().len();
    assert!(db < 1 << 20, "the database is {db} bytes");
    // The file is written compactly, but the evicted middle holds no disk blocks.
    assert!(meta.len() >= log.len() as u64);
    assert!(meta.blocks() * 512 <= 17 << 20, "{} bytes on disk", meta.blocks() * 512);
    std::fs::write(files.join("ghost.log"), b"left by a delete that stopped halfway").unwrap();
    let reopened = Store::connect(&url).await.unwrap().with_output_files(&files).await.unwrap();
    assert!(!files.join("ghost.log").exists());
    assert!(file.exists(), "a session's own file was taken for an orphan");
    deleting_a_session_deletes_its_output(&reopened).await;
    assert!(!file.exists());
}
