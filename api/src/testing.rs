//! Test support shared by the workspace's integration tests (not used by the binaries).

/// A fresh PostgreSQL database for one test, on the server CI starts
/// (`CLISCALE_TEST_POSTGRES_URL`, an admin URL such as postgres://u:p@127.0.0.1/postgres).
/// Without that variable the test is skipped loudly, except under CI, where it fails.
pub async fn fresh_postgres() -> Option<String> {
    let Ok(admin) = std::env::var("CLISCALE_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must set CLISCALE_TEST_POSTGRES_URL: the PostgreSQL tests may not be skipped there"
        );
        eprintln!(
            "SKIPPED: CLISCALE_TEST_POSTGRES_URL is not set, so this PostgreSQL test did not run"
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
