//! 1,000 CommandSessions created at once against the cluster simulator (the in-memory API
//! server with its Job controller and kubelet): how long until every one has its Job, its
//! pod ran and exited 0, and the session is `Succeeded`; and what the process' memory grew by.
//! `cargo bench -p cliscale-operator --bench controller_load` prints the figures.

use std::sync::Arc;
use std::time::Instant;

use cliscale_operator::controller::{Context, run};
use cliscale_operator::desired::OperatorConfig;
use serde_json::json;

const SESSIONS: usize = 1000;

use cliscale_testkit::procinfo::own_rss_kib as rss_kib;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("controller_load: bench");
        return;
    }
    cliscale_core::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let api = cliscale_testkit::fake_kube::FakeApi::new();
        let client = kube::Client::new(api.router(), "default");
        let sim = cliscale_testkit::cluster_sim::ClusterSim::start(&api);
        let config = OperatorConfig { namespace: "team".into(), ..Default::default() };
        let ctx = Arc::new(Context::new(client, config));
        let metrics = ctx.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run(ctx, async move {
            let _ = stopped.await;
        }));
        let before = rss_kib();
        let started = Instant::now();
        for i in 0..SESSIONS {
            sim.script(&format!("load-{i}"), cliscale_testkit::cluster_sim::Lifecycle::Exits(0));
            api.put(
                "commandsessions",
                json!({ "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
                        "metadata": { "name": format!("load-{i}"), "namespace": "team" },
                        "spec": { "command": "true" } }),
            );
        }
        // A loaded machine may take minutes; the guard is for a hang, not a figure.
        let guard = std::time::Duration::from_secs(900);
        api.wait_until_within("every session ran and succeeded", guard, |a| {
            a.count("jobs") == SESSIONS
                && (0..SESSIONS).all(|i| {
                    a.get("commandsessions", "team", &format!("load-{i}"))
                        .is_some_and(|o| o["status"]["phase"] == "Succeeded")
                })
        })
        .await;
        let took = started.elapsed();
        let grown = rss_kib().saturating_sub(before);
        println!("| figure | value |");
        println!("|---|---|");
        println!("| sessions created at once | {SESSIONS} |");
        println!("| time until every one has run and is Succeeded | {:.2} s |", took.as_secs_f64());
        println!("| Jobs ever made | {} |", api.ever_made("jobs"));
        println!("| reconciles run | {} |", metrics.metrics.reconciles.get());
        println!(
            "| memory growth (operator + in-memory API server, one process) | {:.1} MiB |",
            grown as f64 / 1024.0
        );
        let _ = stop.send(());
    });
}
