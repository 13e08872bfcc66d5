//! `cliscale secrets`, `cliscale templates`, `cliscale schedules` and the event log's filters
//! (`cliscale events`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use cliscale_client::rest::{EventQuery, LogEntry, ScheduleSpec, TemplateSpec};
use serde::de::DeserializeOwned;

use crate::Globals;
use crate::fail::{Failure, Outcome};
use crate::present::{self, Format};

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Outcome::Usage, message.into())
}

/// `K=V`. Pure.
pub fn parse_pair(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

/// Reads a YAML or JSON definition from `path` (`-` for standard input).
fn read_definition<T: DeserializeOwned>(path: &PathBuf) -> Result<T, Failure> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::local("reading stdin", e))?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))?
    };
    // YAML is a superset of JSON: one parser reads both.
    serde_norway::from_str(&text).map_err(|e| usage(format!("{}: {e}", path.display())))
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Store a secret. Values come from KEY=VALUE literals, files or an env file, never from
    /// this command's own arguments when they are secret: prefer --from-file or --from-env-file.
    #[command(
        after_help = "Examples:\n  cliscale secrets create deploy --from-file TOKEN=./token.txt\n  \
        cliscale secrets create db --from-env-file db.env\n  \
        cliscale run --secret-env TOKEN=deploy/TOKEN -- ./deploy.sh"
    )]
    Create(SecretData),
    /// Replace every value of a secret.
    Set(SecretData),
    /// List secrets: names, key names, and the templates that use them. Never values.
    Ls {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Delete a secret.
    Rm { name: String },
}

#[derive(clap::Args)]
pub struct SecretData {
    pub name: String,
    /// KEY=VALUE (visible in this shell's history: prefer the file forms for real secrets).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub from_literal: Vec<(String, String)>,
    /// KEY=PATH: the file's content is the value.
    #[arg(long, value_name = "KEY=PATH", value_parser = parse_pair)]
    pub from_file: Vec<(String, String)>,
    /// A file of KEY=VALUE lines (as .env files hold them).
    #[arg(long, value_name = "FILE")]
    pub from_env_file: Vec<PathBuf>,
}

fn secret_data(args: &SecretData) -> Result<BTreeMap<String, String>, Failure> {
    let mut data = BTreeMap::new();
    for file in &args.from_env_file {
        for entry in
            dotenvy::from_path_iter(file).map_err(|e| usage(format!("{}: {e}", file.display())))?
        {
            let (k, v) = entry.map_err(|e| usage(format!("{}: {e}", file.display())))?;
            data.insert(k, v);
        }
    }
    for (k, path) in &args.from_file {
        let value = std::fs::read_to_string(path).map_err(|e| usage(format!("{path}: {e}")))?;
        data.insert(k.clone(), value);
    }
    data.extend(args.from_literal.iter().cloned());
    if data.is_empty() {
        return Err(usage("give at least one of --from-literal, --from-file, --from-env-file"));
    }
    Ok(data)
}

pub async fn secrets(command: SecretsCommand, globals: &Globals) -> Result<i32, Failure> {
    let client = globals.client()?;
    match command {
        SecretsCommand::Create(args) => {
            let made = client.create_secret(&args.name, secret_data(&args)?).await?;
            eprintln!("secret {} stored with keys {}", made.name, made.keys.join(", "));
        }
        SecretsCommand::Set(args) => {
            let made = client.update_secret(&args.name, secret_data(&args)?).await?;
            eprintln!("secret {} replaced; keys {}", made.name, made.keys.join(", "));
        }
        SecretsCommand::Ls { output } => {
            let items = client.list_secrets().await?.items;
            match output {
                Format::Table | Format::Wide => {
                    let mut rows = vec![vec![
                        "NAME".into(),
                        "KEYS".into(),
                        "USED BY".into(),
                        "UPDATED".into(),
                    ]];
                    rows.extend(items.into_iter().map(|s| {
                        vec![s.name, s.keys.join(","), s.used_by.join(","), s.updated_at]
                    }));
                    print!("{}", present::table(&rows));
                }
                format => print!("{}", present::render(format, &items)),
            }
        }
        SecretsCommand::Rm { name } => {
            client.delete_secret(&name).await?;
            eprintln!("secret {name} deleted");
        }
    }
    Ok(0)
}

#[derive(Subcommand)]
pub enum TemplatesCommand {
    /// Create a template from a YAML or JSON file, or replace the one of its name.
    #[command(
        after_help = "Example file:\n  name: deploy\n  session:\n    command: ./deploy.sh\n    \
        secret_env: {TOKEN: {secret: deploy, key: TOKEN}}\n  params:\n    \
        - {name: TARGET, type: string, required: true, allowed: [staging, prod]}\n  \
        retry: {limit: 2, initialBackoffSeconds: 30}\n\nExample:\n  cliscale templates apply -f deploy.yaml"
    )]
    Apply {
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
    },
    /// List templates.
    Ls {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show a template and its latest runs.
    Get {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
    /// Delete a template (its trigger tokens are revoked).
    Rm { name: String },
    /// Trigger tokens: what a CI system runs a template with.
    #[command(subcommand)]
    Triggers(TriggersCommand),
}

#[derive(Subcommand)]
pub enum TriggersCommand {
    /// Make a token; it is printed once.
    #[command(
        after_help = "Example:\n  cliscale templates triggers create deploy --name github --param TARGET\n  \
        curl -X POST -H \"Authorization: Bearer $TOKEN\" -d '{\"params\":{\"TARGET\":\"prod\"}}' \\\n    \
        https://cliscale.example.com/api/templates/deploy/trigger"
    )]
    Create {
        template: String,
        #[arg(long)]
        name: String,
        /// A parameter calls with this token may set (repeat for more).
        #[arg(long = "param", value_name = "NAME")]
        params: Vec<String>,
    },
    Ls {
        template: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    Revoke {
        template: String,
        id: String,
    },
}

pub async fn templates(command: TemplatesCommand, globals: &Globals) -> Result<i32, Failure> {
    let client = globals.client()?;
    match command {
        TemplatesCommand::Apply { file } => {
            let spec: TemplateSpec = read_definition(&file)?;
            let exists =
                client.list_templates().await?.items.iter().any(|t| t.spec.name == spec.name);
            let made = client.put_template(&spec, exists).await?;
            eprintln!("template {} at generation {}", made.spec.name, made.generation);
        }
        TemplatesCommand::Ls { output } => {
            let items = client.list_templates().await?.items;
            match output {
                Format::Table | Format::Wide => {
                    let mut rows = vec![vec![
                        "NAME".into(),
                        "GEN".into(),
                        "PARAMS".into(),
                        "LAST RUN".into(),
                        "DESCRIPTION".into(),
                    ]];
                    rows.extend(items.into_iter().map(|t| {
                        vec![
                            t.spec.name,
                            t.generation.to_string(),
                            t.spec
                                .params
                                .iter()
                                .map(|p| p.name.clone())
                                .collect::<Vec<_>>()
                                .join(","),
                            t.recent_runs
                                .first()
                                .map(|r| r.phase.to_string())
                                .unwrap_or_else(|| "-".into()),
                            present::one_line(t.spec.description.as_deref().unwrap_or(""), 60),
                        ]
                    }));
                    print!("{}", present::table(&rows));
                }
                format => print!("{}", present::render(format, &items)),
            }
        }
        TemplatesCommand::Get { name, output } => {
            print!("{}", present::render(output, &client.template(&name).await?));
        }
        TemplatesCommand::Rm { name } => {
            client.delete_template(&name).await?;
            eprintln!("template {name} deleted");
        }
        TemplatesCommand::Triggers(TriggersCommand::Create { template, name, params }) => {
            let made = client.create_trigger(&template, &name, params).await?;
            println!("{}", made.token.as_deref().unwrap_or_default());
            eprintln!("trigger {} for template {template}: shown once, keep it", made.id);
        }
        TemplatesCommand::Triggers(TriggersCommand::Ls { template, output }) => {
            let items = client.list_triggers(&template).await?.items;
            match output {
                Format::Table | Format::Wide => {
                    let mut rows = vec![vec![
                        "ID".into(),
                        "NAME".into(),
                        "PARAMS".into(),
                        "LAST USED".into(),
                        "REVOKED".into(),
                    ]];
                    rows.extend(items.into_iter().map(|t| {
                        vec![
                            t.id,
                            t.name,
                            t.params.join(","),
                            t.last_used_at.unwrap_or_else(|| "-".into()),
                            t.revoked_at.unwrap_or_else(|| "-".into()),
                        ]
                    }));
                    print!("{}", present::table(&rows));
                }
                format => print!("{}", present::render(format, &items)),
            }
        }
        TemplatesCommand::Triggers(TriggersCommand::Revoke { template, id }) => {
            client.revoke_trigger(&template, &id).await?;
            eprintln!("trigger {id} revoked");
        }
    }
    Ok(0)
}

#[derive(Subcommand)]
pub enum SchedulesCommand {
    /// Create a schedule from a YAML or JSON file, or replace the one of its name.
    #[command(
        after_help = "Example file:\n  name: nightly\n  template: deploy\n  params: {TARGET: staging}\n  \
        cron: \"30 2 * * *\"\n  timeZone: Europe/Berlin\n  concurrencyPolicy: Forbid\n  \
        startingDeadlineSeconds: 600\n\nExample:\n  cliscale schedules apply -f nightly.yaml"
    )]
    Apply {
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
    },
    /// List schedules with their next run.
    Ls {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show a schedule: its spec, next run times, active runs, skipped and missed times.
    Get {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
    /// Stop starting runs (the times that pass are recorded as skipped).
    Suspend { name: String },
    /// Start runs again, from the next time on.
    Resume { name: String },
    /// Delete a schedule.
    Rm { name: String },
}

pub async fn schedules(command: SchedulesCommand, globals: &Globals) -> Result<i32, Failure> {
    let client = globals.client()?;
    match command {
        SchedulesCommand::Apply { file } => {
            let spec: ScheduleSpec = read_definition(&file)?;
            let exists =
                client.list_schedules().await?.items.iter().any(|s| s.spec.name == spec.name);
            let made = client.put_schedule(&spec, exists).await?;
            let next = made.status.next_run_times.first().cloned().unwrap_or_else(|| "-".into());
            eprintln!("schedule {}: next run {next}", made.spec.name);
        }
        SchedulesCommand::Ls { output } => {
            let items = client.list_schedules().await?.items;
            match output {
                Format::Table | Format::Wide => {
                    let mut rows = vec![vec![
                        "NAME".into(),
                        "CRON".into(),
                        "ZONE".into(),
                        "TEMPLATE".into(),
                        "SUSPENDED".into(),
                        "ACTIVE".into(),
                        "NEXT".into(),
                    ]];
                    rows.extend(items.into_iter().map(|s| {
                        vec![
                            s.spec.name,
                            s.spec.cron,
                            s.spec.time_zone.unwrap_or_else(|| "UTC".into()),
                            s.spec.template,
                            s.spec.suspend.to_string(),
                            s.status.active.len().to_string(),
                            s.status.next_run_times.first().cloned().unwrap_or_else(|| "-".into()),
                        ]
                    }));
                    print!("{}", present::table(&rows));
                }
                format => print!("{}", present::render(format, &items)),
            }
        }
        SchedulesCommand::Get { name, output } => {
            print!("{}", present::render(output, &client.schedule(&name).await?));
        }
        SchedulesCommand::Suspend { name } => set_suspend(&client, &name, true).await?,
        SchedulesCommand::Resume { name } => set_suspend(&client, &name, false).await?,
        SchedulesCommand::Rm { name } => {
            client.delete_schedule(&name).await?;
            eprintln!("schedule {name} deleted");
        }
    }
    Ok(0)
}

async fn set_suspend(
    client: &cliscale_client::Client,
    name: &str,
    suspend: bool,
) -> Result<(), Failure> {
    let spec = ScheduleSpec { suspend, ..client.schedule(name).await?.spec };
    client.put_schedule(&spec, true).await?;
    eprintln!("schedule {name} {}", if suspend { "suspended" } else { "resumed" });
    Ok(())
}

/// `cliscale events`: one session's events, or the whole log filtered.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  cliscale events SESSION\n  cliscale events --template deploy --type retried\n  \
    cliscale events --schedule nightly --since 24h --order desc -o json"
)]
pub struct EventsArgs {
    /// Only this session's events.
    pub session: Option<String>,
    #[arg(long)]
    pub template: Option<String>,
    #[arg(long)]
    pub schedule: Option<String>,
    /// created, phase, cancel, scheduled, skipped, missed, retried, trigger_used, …
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// An API key id, trigger:<id> or schedule:<name>.
    #[arg(long)]
    pub actor: Option<String>,
    /// At or after: RFC 3339, Unix seconds, or a while ago (`2h`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Before: RFC 3339, Unix seconds, or a while ago.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// asc (oldest first) or desc.
    #[arg(long, default_value = "asc", value_parser = ["asc", "desc"])]
    pub order: String,
    /// At most this many entries.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

pub async fn events(args: EventsArgs, globals: &Globals) -> Result<i32, Failure> {
    let client = globals.client()?;
    let now = std::time::SystemTime::now();
    let bound = |t: &Option<String>| t.as_deref().map(|t| present::time_bound(t, now)).transpose();
    let mut query = EventQuery {
        session: args.session.clone(),
        template: args.template.clone(),
        schedule: args.schedule.clone(),
        kind: args.kind.clone(),
        actor: args.actor.clone(),
        after: bound(&args.since)?,
        before: bound(&args.until)?,
        order: Some(args.order.clone()),
        limit: Some(args.limit.clamp(1, 500) as i64),
        cursor: None,
    };
    let mut entries: Vec<LogEntry> = Vec::new();
    while entries.len() < args.limit {
        let page = client.log(&query).await?;
        entries.extend(page.items);
        match page.next_cursor {
            Some(next) => query.cursor = Some(next),
            None => break,
        }
    }
    entries.truncate(args.limit);
    match args.output {
        Format::Table | Format::Wide => {
            let mut rows = vec![vec![
                "SEQ".into(),
                "TIME".into(),
                "TYPE".into(),
                "SESSION".into(),
                "ACTOR".into(),
                "MESSAGE".into(),
            ]];
            rows.extend(entries.into_iter().map(|e| {
                vec![
                    e.seq.to_string(),
                    e.at,
                    e.kind,
                    e.session.map(|s| s.chars().take(8).collect()).unwrap_or_else(|| "-".into()),
                    e.actor.unwrap_or_else(|| "-".into()),
                    e.message,
                ]
            }));
            print!("{}", present::table(&rows));
        }
        format => print!("{}", present::render(format, &entries)),
    }
    Ok(0)
}
