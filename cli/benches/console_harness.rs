//! Load harness for the web console with 10,000 sessions: prints figures, asserts nothing about
//! time.
//!
//! `cargo bench -p cliscale --bench console_harness` starts the release `cliscale up`, writes
//! 10,000 finished sessions into its store, and drives the console in headless Chromium: time
//! from opening the page (logged in) to the first page of rows, time for each "Load more" up to
//! 1,000 rows, how long a new session takes to appear through the feed, long tasks (over 50 ms)
//! on the page's main thread, and the page's JavaScript heap.

use std::time::{Duration, Instant};

use cliscale_core::rest::CreateSessionRequest;
use cliscale_core::spec::SessionSpec;
use cliscale_testkit::browser::Browser;
use cliscale_testkit::harness::start_release;
use cliscale_testkit::stack::{ADMIN_KEY, ADMIN_KEY_ID, Stack};
use cliscale_testkit::stats::{median, median_interval};
use serde_json::json;

const SESSIONS: usize = 10_000;
const OPENS: usize = 9;
const PAGES: usize = 19;
const ARRIVALS: usize = 15;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("console_harness: bench");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    rt.unwrap().block_on(run());
}

fn report(name: &str, values: &mut [f64], unit: &str) {
    let m = median(values);
    let (low, high) = median_interval(values);
    println!(
        "{name}: median {m:.1}{unit}, 95 % interval {low:.1}-{high:.1}{unit} ({} runs)",
        values.len()
    );
}

/// Writes `SESSIONS` finished sessions straight into the store, a second apart, as months of
/// use would leave them.
async fn seed(up: &Stack) {
    let url = format!("sqlite://{}", up.data.path().join("cliscale.db").display());
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    let start = cliscale_core::token::now_secs() as i64 - SESSIONS as i64 - 60;
    let phases = ["Succeeded", "Failed", "Cancelled", "TimedOut"];
    for i in 0..SESSIONS {
        let spec = serde_json::to_string(&SessionSpec::new(format!("make test-{i}"))).unwrap();
        let (t, phase) = (start + i as i64, phases[i % phases.len()]);
        sqlx::query(
            "INSERT INTO sessions (id, owner, spec, phase, exit_code, reason, created_at, \
             started_at, finished_at, updated_at, change_seq) \
             VALUES ($1, $2, $3, $4, $5, 'Exited', $6, $6, $7, $7, 0)",
        )
        .bind(format!("seeded-{i:05}"))
        .bind(ADMIN_KEY_ID)
        .bind(spec)
        .bind(phase)
        .bind((i % 4) as i64)
        .bind(t)
        .bind(t + 1)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

const ROWS: &str = "document.querySelectorAll('table.sessions tbody tr').length";

async fn run() {
    let up = start_release(&[]).await;
    seed(&up).await;
    let keep = std::env::temp_dir();
    let Some(mut b) = Browser::launch_or_skip(&keep).await else { return };
    b.open_watched(&format!("{}/", up.base)).await;
    b.wait_until("document.querySelector('#api-key') !== null").await;
    b.eval("document.querySelector('#api-key').focus(); true").await;
    b.call("Input.insertText", json!({ "text": ADMIN_KEY })).await;
    b.eval("document.querySelector('form button[type=submit]').click(); true").await;
    b.wait_until(&format!("{ROWS} === 50")).await;

    // 1. Opening the page, logged in, to its first 50 rows (the newest of 10,000).
    let mut opens = Vec::new();
    for _ in 0..OPENS {
        b.call("Page.reload", json!({})).await;
        b.wait_until(&format!("{ROWS} === 50 && document.querySelector('.live.on') !== null"))
            .await;
        let ms = b.eval("performance.now()").await.as_f64().unwrap();
        opens.push(ms);
    }
    report("open to the first 50 of 10,000 sessions", &mut opens, " ms");

    // Long tasks from here on.
    b.eval(
        "window.__long = []; new PerformanceObserver((l) => { for (const e of l.getEntries()) \
           window.__long.push(e.duration); }).observe({ type: 'longtask', buffered: false }); true",
    )
    .await;

    // 2. "Load more", page after page, to 1,000 rows.
    let mut pages = Vec::new();
    for page in 1..=PAGES {
        let want = 50 * (page + 1);
        let t = Instant::now();
        b.eval("[...document.querySelectorAll('button')].find((e) => e.textContent === 'Load more').click(); true").await;
        b.wait_until_within(&format!("{ROWS} === {want}"), 60).await;
        pages.push(t.elapsed().as_secs_f64() * 1e3);
    }
    report("each \"Load more\" (50 rows) up to 1,000 rows", &mut pages, " ms");

    // 3. A new session reaching the page through the feed, with 1,000 rows shown.
    let admin = up.client(ADMIN_KEY);
    let mut arrivals = Vec::new();
    for i in 0..ARRIVALS {
        let request = CreateSessionRequest::new(format!("echo arrival-{i}"));
        let t = Instant::now();
        let id = admin.create_session(&request, None).await.unwrap().session_id;
        b.wait_until_within(
            &format!("document.querySelector('tr[data-session=\"{id}\"]') !== null"),
            30,
        )
        .await;
        arrivals.push(t.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(100)).await; // spaced, as people create them
    }
    report("a new session's row appears (create to row)", &mut arrivals, " ms");

    let long = b.eval("window.__long").await;
    let long: Vec<f64> = long.as_array().unwrap().iter().filter_map(|v| v.as_f64()).collect();
    println!(
        "long tasks (> 50 ms) while paging and receiving: {} (longest {:.0} ms)",
        long.len(),
        long.iter().cloned().fold(0.0, f64::max)
    );
    let heap = b.eval("performance.memory ? performance.memory.usedJSHeapSize : 0").await;
    println!("page JavaScript heap with 1,000 rows: {:.1} MB", heap.as_f64().unwrap_or(0.0) / 1e6);
    let violations = b.eval("window.__violations").await;
    assert_eq!(violations, json!([]));
    assert!(b.errors().is_empty(), "console errors: {:?}", b.errors());
}
