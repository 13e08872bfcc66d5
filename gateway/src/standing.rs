//! Whether the API key a token was minted for still stands. A token outlives nothing of its
//! key's: a revoked, deleted or demoted key's tokens open nothing (checked at every admission,
//! reconnect tokens included), and its open terminals end within one check interval.
//!
//! One watcher per gateway asks the directory about the keys that hold live terminals, once per
//! interval, and publishes the fallen ones; each relay watches that list for its own key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cliscale_core::token::TokenScope;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::BoxFuture;

/// What a key may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStanding {
    /// It may open terminals that type (admin and operator keys).
    Interact,
    /// It may only watch (viewer keys).
    View,
    /// Revoked, deleted or never known: its tokens open nothing.
    Gone,
}

impl KeyStanding {
    /// Whether a terminal of `scope` may open or stay open on this key. Pure.
    pub fn allows(self, scope: TokenScope) -> bool {
        match self {
            Self::Interact => true,
            Self::View => scope == TokenScope::View,
            Self::Gone => false,
        }
    }
}

/// The API's keys, as the gateway may ask about them.
pub trait KeyDirectory: Send + Sync + 'static {
    fn standing(&self, key_id: &str) -> BoxFuture<'_, Result<KeyStanding, String>>;
}

/// The keys holding live terminals, and those found fallen at the last check.
#[derive(Default)]
pub struct KeyWatch {
    live: Mutex<HashMap<String, usize>>,
    fallen: watch::Sender<Arc<HashMap<String, KeyStanding>>>,
}

/// Holds a key's place among the live ones while its terminal is open.
pub struct LiveKey {
    watch: Arc<KeyWatch>,
    key: String,
}

impl Drop for LiveKey {
    fn drop(&mut self) {
        let mut live = self.watch.live.lock().expect("live keys lock");
        if let Some(count) = live.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                live.remove(&self.key);
            }
        }
    }
}

impl KeyWatch {
    /// Counts a terminal open on `key` until the returned guard drops.
    pub fn hold(self: &Arc<Self>, key: &str) -> LiveKey {
        *self.live.lock().expect("live keys lock").entry(key.to_owned()).or_default() += 1;
        LiveKey { watch: self.clone(), key: key.to_owned() }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<HashMap<String, KeyStanding>>> {
        self.fallen.subscribe()
    }

    /// Asks `directory` about every key with a live terminal, every `every`, until `stop`.
    /// A directory that cannot answer changes nothing: terminals are not cut for an outage.
    pub async fn run(
        self: Arc<Self>,
        directory: Arc<dyn KeyDirectory>,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let keys: Vec<String> =
                self.live.lock().expect("live keys lock").keys().cloned().collect();
            let mut fallen = HashMap::new();
            for key in keys {
                match directory.standing(&key).await {
                    Ok(KeyStanding::Interact) => {}
                    Ok(standing) => {
                        fallen.insert(key, standing);
                    }
                    Err(error) => tracing::warn!(%error, "cannot check an API key's standing"),
                }
            }
            self.fallen.send_if_modified(|current| {
                if **current == fallen {
                    return false;
                }
                *current = Arc::new(fallen);
                true
            });
        }
    }
}

/// Whether `key`'s terminal of `scope` must end, by the last check. Pure.
pub fn must_end(fallen: &HashMap<String, KeyStanding>, key: &str, scope: TokenScope) -> bool {
    fallen.get(key).is_some_and(|standing| !standing.allows(scope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standings_allow_what_their_roles_do() {
        assert!(KeyStanding::Interact.allows(TokenScope::Interact));
        assert!(KeyStanding::View.allows(TokenScope::View));
        assert!(!KeyStanding::View.allows(TokenScope::Interact));
        assert!(!KeyStanding::Gone.allows(TokenScope::View));
        let fallen = HashMap::from([("k1".to_string(), KeyStanding::View)]);
        assert!(must_end(&fallen, "k1", TokenScope::Interact));
        assert!(!must_end(&fallen, "k1", TokenScope::View));
        assert!(!must_end(&fallen, "k2", TokenScope::Interact));
    }

    /// A directory whose answers the test sets, counting the questions.
    #[derive(Default)]
    struct Directory {
        standings: Mutex<HashMap<String, KeyStanding>>,
        asked: std::sync::atomic::AtomicUsize,
        heard: tokio::sync::Notify,
    }

    impl KeyDirectory for Directory {
        fn standing(&self, key_id: &str) -> BoxFuture<'_, Result<KeyStanding, String>> {
            let standing = self.standings.lock().unwrap().get(key_id).copied();
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.heard.notify_waiters();
            Box::pin(async move { standing.ok_or_else(|| "down".to_string()) })
        }
    }

    #[tokio::test]
    async fn a_fallen_key_is_published_to_its_terminals_and_an_outage_cuts_nothing() {
        let watch = Arc::new(KeyWatch::default());
        let directory = Arc::new(Directory::default());
        directory.standings.lock().unwrap().extend([
            ("a".to_string(), KeyStanding::Interact),
            ("b".to_string(), KeyStanding::Interact),
        ]);
        let held = (watch.hold("a"), watch.hold("b"));
        let mut rx = watch.subscribe();
        let stop = CancellationToken::new();
        let every = Duration::from_millis(10);
        let task = tokio::spawn(watch.clone().run(directory.clone(), every, stop.clone()));
        directory.standings.lock().unwrap().insert("b".into(), KeyStanding::Gone);
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().get("b"), Some(&KeyStanding::Gone));
        assert_eq!(rx.borrow().get("a"), None);
        // The directory cannot answer for "a" over several checks: nothing about "a" changes.
        directory.standings.lock().unwrap().remove("a");
        let asked = directory.asked.load(std::sync::atomic::Ordering::SeqCst);
        while directory.asked.load(std::sync::atomic::Ordering::SeqCst) < asked + 6 {
            directory.heard.notified().await;
        }
        assert_eq!(rx.borrow().get("a"), None);
        drop(held);
        assert!(watch.live.lock().unwrap().is_empty(), "closed terminals are not watched");
        stop.cancel();
        task.await.unwrap();
    }
}
