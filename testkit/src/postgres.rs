//! Throwaway PostgreSQL databases, and loud skips.

/// Reports a test that cannot run on this machine for want of `requirement`: a loud `SKIPPED`
/// note, so a skip never passes for a pass. Under CI (the `CI` variable set) it fails instead,
/// because `.ci/run` installs and starts everything the tests need.
pub fn skip_unless_ci(requirement: &str, note: &str) {
    assert!(
        std::env::var("CI").is_err(),
        "CI must provide {requirement}: the tests that need it may not be skipped there"
    );
    eprintln!("SKIPPED: {note}");
}

/// A fresh PostgreSQL database for one test, on the server CI starts
/// (`CLISCALE_TEST_POSTGRES_URL`, an admin URL such as postgres://u:p@127.0.0.1/postgres).
/// Without that variable the test is skipped loudly, except under CI, where it fails.
pub async fn fresh_postgres() -> Option<String> {
    let Ok(admin) = std::env::var("CLISCALE_TEST_POSTGRES_URL") else {
        skip_unless_ci(
            "CLISCALE_TEST_POSTGRES_URL",
            "CLISCALE_TEST_POSTGRES_URL is not set, so this PostgreSQL test did not run",
        );
        return None;
    };
    let name = format!("cliscale_test_{:016x}", rand::random::<u64>());
    sqlx::any::install_default_drivers();
    let mut conn =
        <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.expect("admin connection");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    Some(format!("{base}/{name}"))
}
