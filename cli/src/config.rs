//! Contexts: named servers with the API key to use on each, as kubectl keeps clusters. They live
//! in `$XDG_CONFIG_HOME/cliscale/config.yaml` (else `~/.config/cliscale/config.yaml`), mode 0600.
//!
//! Which server a command talks to, first match wins: `--server`/`--api-key` (or
//! `CLISCALE_URL`/`CLISCALE_API_KEY`), then `--context`, then the current context.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fail::{Failure, Outcome};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Context {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// What the command line and the environment name.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub server: Option<String>,
    pub api_key: Option<String>,
    pub context: Option<String>,
}

/// The server and key a command uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub api_key: Option<String>,
    /// The context it came from, if any.
    pub context: Option<String>,
}

/// Picks the server and key, by the rule in the module's comment. Pure.
pub fn resolve(config: &Config, overrides: &Overrides) -> Result<Target, Failure> {
    let named = overrides.context.as_deref().or(config.current_context.as_deref());
    let context = match (named, overrides.context.is_some()) {
        (Some(name), explicit) => match config.contexts.get(name) {
            Some(c) => Some((name, c)),
            None if explicit || overrides.server.is_none() => {
                return Err(Failure::new(
                    Outcome::Config,
                    format!(
                        "there is no context named {name:?} (cliscale config get-contexts lists them)"
                    ),
                ));
            }
            None => None,
        },
        (None, _) => None,
    };
    let url = overrides.server.clone().or_else(|| context.map(|(_, c)| c.url.clone()));
    let Some(url) = url else {
        return Err(Failure::new(
            Outcome::Config,
            "no server is set: run `cliscale login URL`, or set CLISCALE_URL and CLISCALE_API_KEY",
        ));
    };
    // A key from the context is only sent to that context's own server.
    let context_key = context.filter(|(_, c)| c.url == url).and_then(|(_, c)| c.api_key.clone());
    Ok(Target {
        url,
        api_key: overrides.api_key.clone().or(context_key),
        context: context.map(|(name, _)| name.to_owned()),
    })
}

pub fn path() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("cliscale")
        .join("config.yaml")
}

pub fn load(path: &Path) -> Result<Config, Failure> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_norway::from_str(&text).map_err(|e| {
            Failure::new(
                Outcome::Config,
                format!("{} is not a cliscale config: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => {
            Err(Failure::new(Outcome::Config, format!("cannot read {}: {e}", path.display())))
        }
    }
}

/// Writes the config readable by its owner only: it holds API keys. Written beside and renamed
/// into place, so a crash leaves the old file or the new one, never half of one.
pub fn save(path: &Path, config: &Config) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        Failure::new(Outcome::Config, format!("cannot write {}: {e}", path.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let text = serde_norway::to_string(config).expect("the config serializes");
    let temp = dir.join(format!(".config.yaml.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(fail)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(fail)?;
    std::fs::rename(&temp, path).map_err(fail)
}

/// A context name from a server's address: its host, and its port when it has one. Pure.
pub fn name_for(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "default".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let ctx = |url: &str, key: &str| Context { url: url.into(), api_key: Some(key.into()) };
        Config {
            current_context: Some("local".into()),
            contexts: [
                ("local".to_string(), ctx("http://127.0.0.1:8080", "csk_local")),
                ("prod".to_string(), ctx("https://cli.example.test", "csk_prod")),
            ]
            .into(),
        }
    }

    #[test]
    fn the_current_context_serves_when_nothing_else_is_named() {
        let t = resolve(&config(), &Overrides::default()).unwrap();
        assert_eq!(
            (t.url.as_str(), t.api_key.as_deref()),
            ("http://127.0.0.1:8080", Some("csk_local"))
        );
    }

    #[test]
    fn a_named_context_wins_over_the_current_one_and_flags_win_over_both() {
        let named = Overrides { context: Some("prod".into()), ..Default::default() };
        assert_eq!(resolve(&config(), &named).unwrap().api_key.as_deref(), Some("csk_prod"));
        let key = Overrides { api_key: Some("csk_flag".into()), ..named };
        assert_eq!(resolve(&config(), &key).unwrap().api_key.as_deref(), Some("csk_flag"));
    }

    #[test]
    fn a_contexts_key_never_goes_to_another_server() {
        let elsewhere =
            Overrides { server: Some("https://evil.example.test".into()), ..Default::default() };
        let t = resolve(&config(), &elsewhere).unwrap();
        assert_eq!((t.url.as_str(), t.api_key), ("https://evil.example.test", None));
    }

    #[test]
    fn nothing_configured_or_an_unknown_context_is_a_config_failure() {
        let none = resolve(&Config::default(), &Overrides::default()).unwrap_err();
        assert_eq!(none.outcome, Outcome::Config);
        let unknown = Overrides { context: Some("nope".into()), ..Default::default() };
        assert!(resolve(&config(), &unknown).unwrap_err().message.contains("nope"));
    }

    #[test]
    fn the_file_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cliscale/config.yaml");
        save(&path, &config()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap(), config());
        assert_eq!(load(&dir.path().join("absent.yaml")).unwrap(), Config::default());
    }

    #[test]
    fn context_names_come_from_the_address() {
        assert_eq!(name_for("http://127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(name_for("https://cli.example.test/"), "cli.example.test");
    }
}
