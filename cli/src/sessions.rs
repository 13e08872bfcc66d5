//! Creating, reading and managing sessions.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cliscale_client::rest::{CreateSessionRequest, ListQuery, SecretRef, SessionView, TokenMinted};
use cliscale_client::stream::{FeedEvent, OutputEvent};
use cliscale_client::terminal::{AttachOptions, Terminal};
use cliscale_client::{Client, OutputRange};
use cliscale_core::token::TokenScope;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::Globals;
use crate::attach::{self, DetachKeysArg};
use crate::fail::{Failure, Outcome};
use crate::present::{self, Format};

const RUN_EXAMPLES: &str = "\
Examples:
  cliscale run -- bash
  cliscale run -- 'make test && make lint'
  cliscale run --code-url https://github.com/org/repo/tree/main --install 'npm ci' -- npm test
  cliscale run --env-file .env --env TOKEN --mask TOKEN -- ./deploy.sh
  cliscale run --detach --timeout 30m -- claude -p 'fix the failing test'
  cliscale run --template deploy -p TARGET=prod

One argument after -- is a shell command line (run by bash -c); several are quoted for the
shell word by word. The exit status is the session's: 128+N when a signal ended it.";

#[derive(clap::Args)]
#[command(after_help = RUN_EXAMPLES)]
pub struct RunArgs {
    /// Code to fetch first: a GitHub tree URL, .zip, .tar.gz or git URL.
    #[arg(long, value_name = "URL")]
    pub code_url: Option<String>,
    /// The SHA-256 (hex) the downloaded archive must have.
    #[arg(long, requires = "code_url", value_name = "SHA256")]
    pub checksum: Option<String>,
    /// A command run in the code's directory before the session's command.
    #[arg(long, value_name = "COMMAND")]
    pub install: Option<String>,
    /// Text given to the command as CLISCALE_PROMPT.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// An environment variable: NAME=VALUE, or NAME to pass this shell's value on.
    #[arg(long = "env", short = 'e', value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Read variables from a file of NAME=VALUE lines (as .env files hold them).
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Mask this variable's value (`***`) wherever the output shows it.
    #[arg(long, value_name = "NAME")]
    pub mask: Vec<String>,
    /// A variable from a stored secret (`cliscale secrets`): its value never passes through
    /// this machine's command line or the session's records.
    #[arg(long, value_name = "NAME=SECRET/KEY", value_parser = parse_secret_env)]
    pub secret_env: Vec<(String, SecretRef)>,
    /// Stop the session after this long (`90s`, `30m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Keep the finished session, its output and its recording this long (default 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// The session's terminal size (default: this terminal's, else 80x24).
    #[arg(long, value_name = "COLSxROWS", value_parser = parse_size)]
    pub size: Option<(u16, u16)>,
    /// Lines the browser terminal keeps above the screen.
    #[arg(long, value_name = "LINES")]
    pub scrollback: Option<u32>,
    /// Print the session's id and terminal link instead of attaching.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Makes a retried create return the session the first attempt made (default: one per run).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Run this template instead of a command (its parameters with -p).
    #[arg(long, value_name = "NAME", conflicts_with_all = [
        "code_url", "install", "prompt", "prompt_file", "env", "env_file", "mask", "secret_env",
        "timeout", "ttl", "size", "scrollback", "idempotency_key"])]
    pub template: Option<String>,
    /// A template parameter: NAME=VALUE (repeat for more).
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", requires = "template",
          value_parser = crate::definitions::parse_pair)]
    pub params: Vec<(String, String)>,
    #[command(flatten)]
    pub keys: DetachKeysArg,
    /// The command.
    #[arg(
        required_unless_present = "template",
        conflicts_with = "template",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// `NAME=SECRET/KEY`. Pure.
pub fn parse_secret_env(raw: &str) -> Result<(String, SecretRef), String> {
    let shape = || format!("{raw:?} is not NAME=SECRET/KEY");
    let (name, source) = raw.split_once('=').ok_or_else(shape)?;
    let (secret, key) = source.split_once('/').ok_or_else(shape)?;
    if name.is_empty() || secret.is_empty() || key.is_empty() {
        return Err(shape());
    }
    Ok((name.into(), SecretRef { secret: secret.into(), key: key.into() }))
}

/// `COLSxROWS`. Pure.
pub fn parse_size(raw: &str) -> Result<(u16, u16), String> {
    let (cols, rows) = raw.split_once(['x', 'X']).ok_or("the size is COLSxROWS, e.g. 120x40")?;
    let parse = |v: &str| v.trim().parse::<u16>().map_err(|_| format!("{v:?} is not a number"));
    Ok((parse(cols)?, parse(rows)?))
}

/// One argument is a shell command line as written; several are quoted word by word, so
/// `cliscale run -- ls "my file"` lists one file. Pure.
pub fn command_line(words: &[String]) -> Result<String, Failure> {
    match words {
        [one] => Ok(one.clone()),
        words => shlex::try_join(words.iter().map(String::as_str)).map_err(|e| {
            Failure::new(Outcome::Usage, format!("the command cannot be quoted: {e}"))
        }),
    }
}

/// `--env` and `--env-file` into one map; later ones win, flags over files.
fn environment(args: &RunArgs) -> Result<BTreeMap<String, String>, Failure> {
    let mut env = BTreeMap::new();
    for file in &args.env_file {
        let entries = dotenvy::from_path_iter(file)
            .map_err(|e| Failure::new(Outcome::Usage, format!("{}: {e}", file.display())))?;
        for entry in entries {
            let (name, value) = entry
                .map_err(|e| Failure::new(Outcome::Usage, format!("{}: {e}", file.display())))?;
            env.insert(name, value);
        }
    }
    for item in &args.env {
        let (name, value) = match item.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => {
                let value = std::env::var(item).map_err(|_| {
                    Failure::new(Outcome::Usage, format!("--env {item}: {item} is not set here"))
                })?;
                (item.clone(), value)
            }
        };
        env.insert(name, value);
    }
    Ok(env)
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn request(args: &RunArgs, size: Option<(u16, u16)>) -> Result<CreateSessionRequest, Failure> {
    let prompt = match &args.prompt_file {
        Some(path) if path.as_os_str() == "-" => Some(
            std::io::read_to_string(std::io::stdin())
                .map_err(|e| Failure::local("reading the prompt", e))?,
        ),
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Failure::new(Outcome::Usage, format!("{}: {e}", path.display())))?,
        ),
        None => args.prompt.clone(),
    };
    let env = environment(args)?;
    Ok(CreateSessionRequest {
        code_url: args.code_url.clone(),
        code_checksum_sha256: args.checksum.clone(),
        command: command_line(&args.command)?,
        prompt,
        install_cmd: args.install.clone(),
        masked_env: (!args.mask.is_empty()).then(|| args.mask.clone()),
        env: (!env.is_empty()).then_some(env),
        secret_env: (!args.secret_env.is_empty())
            .then(|| args.secret_env.iter().cloned().collect()),
        cols: size.map(|s| s.0),
        rows: size.map(|s| s.1),
        timeout_seconds: args.timeout.map(whole_seconds),
        ttl_seconds: args.ttl.map(whole_seconds),
        scrollback_lines: args.scrollback,
    })
}

pub async fn run(args: RunArgs, globals: &Globals) -> Result<i32, Failure> {
    let client = globals.client()?;
    let created = match &args.template {
        // A template run is not retried: a lost answer could have started it.
        Some(template) => {
            let params = args
                .params
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            client.run_template(template, params).await?
        }
        None => {
            let size =
                args.size.or_else(|| if args.detach { None } else { attach::terminal_size() });
            let request = request(&args, size)?;
            // One key per run: a create retried after a lost answer cannot start the command
            // twice.
            let idempotency = args
                .idempotency_key
                .clone()
                .unwrap_or_else(|| format!("cliscale-run-{:032x}", rand::random::<u128>()));
            match client.create_session(&request, Some(&idempotency)).await {
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    client.create_session(&request, Some(&idempotency)).await?
                }
                other => other?,
            }
        }
    };
    if args.detach {
        println!("{}", created.session_id);
        println!("{}", created.terminal_url);
        return Ok(0);
    }
    let minted = TokenMinted {
        session_id: created.session_id,
        ws_url: created.ws_url,
        token: created.token,
        terminal_url: created.terminal_url,
        scope: TokenScope::Interact,
        expires_in_seconds: 0,
    };
    let terminal = Terminal::open(&client, &minted, AttachOptions::default()).await?;
    attach::attach(&minted.session_id, terminal, false, &args.keys.detach_keys).await
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  cliscale ls\n  cliscale ls --phase Failed --created-after 24h -o wide\n  cliscale ls -q deploy\n  \
    cliscale ls -o json | jq -r '.[].sessionId'\n  cliscale ls --watch"
)]
pub struct ListArgs {
    /// Only sessions in this phase (Pending, Starting, Running, Succeeded, Failed, TimedOut,
    /// Cancelled, Lost).
    #[arg(long)]
    pub phase: Option<String>,
    /// Only sessions of this API key id.
    #[arg(long)]
    pub owner: Option<String>,
    /// Created at or after: RFC 3339, Unix seconds, or a while ago (`2h`).
    #[arg(long, value_name = "TIME")]
    pub created_after: Option<String>,
    /// Created before: RFC 3339, Unix seconds, or a while ago (`2h`).
    #[arg(long, value_name = "TIME")]
    pub created_before: Option<String>,
    /// Only sessions whose id or command contains this text (case-insensitive).
    #[arg(short = 'q', long, value_name = "TEXT")]
    pub search: Option<String>,
    /// At most this many sessions.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Keep watching: print each session again when it is created or changes (from the
    /// server's session feed).
    #[arg(short = 'w', long)]
    pub watch: bool,
}

fn list_query(args: &ListArgs, now: SystemTime) -> Result<ListQuery, Failure> {
    Ok(ListQuery {
        phase: args.phase.clone(),
        owner: args.owner.clone(),
        created_after: args
            .created_after
            .as_deref()
            .map(|t| present::time_bound(t, now))
            .transpose()?,
        created_before: args
            .created_before
            .as_deref()
            .map(|t| present::time_bound(t, now))
            .transpose()?,
        q: args.search.clone(),
        limit: None,
        cursor: None,
    })
}

/// Up to `limit` sessions, following the API's cursors.
async fn collect(
    client: &Client,
    mut query: ListQuery,
    limit: usize,
) -> Result<Vec<SessionView>, Failure> {
    let mut all = Vec::new();
    loop {
        query.limit = Some((limit - all.len()).clamp(1, 200) as i64);
        let page = client.list_sessions(&query).await?;
        all.extend(page.items);
        match page.next_cursor {
            Some(cursor) if all.len() < limit => query.cursor = Some(cursor),
            _ => break,
        }
    }
    all.truncate(limit);
    Ok(all)
}

pub async fn list(args: ListArgs, globals: &Globals) -> Result<i32, Failure> {
    let client = globals.client()?;
    let query = list_query(&args, SystemTime::now())?;
    if args.limit == 0 {
        return Err(Failure::new(Outcome::Usage, "--limit must be at least 1"));
    }
    // Watching subscribes before it lists: a change between the two is then in the feed.
    let mut feed = None;
    if args.watch {
        let mut subscribed = client.session_feed(query.feed(None));
        while !matches!(subscribed.next().await?, FeedEvent::Ready { .. }) {}
        feed = Some(subscribed);
    }
    let sessions = collect(&client, query, args.limit).await?;
    let wide = args.output == Format::Wide;
    let Some(mut feed) = feed else {
        match args.output {
            Format::Table | Format::Wide => {
                print!("{}", present::sessions_table(&sessions, wide, true, SystemTime::now()));
            }
            format => print!("{}", present::render(format, &sessions)),
        }
        return Ok(0);
    };
    // Each session is printed again whenever it changes; a JSON watch prints one object per
    // line, so a program reads it line by line.
    let mut header = false;
    let mut shown: HashMap<String, String> = HashMap::new();
    for s in sessions.iter().rev() {
        shown.insert(s.session_id.clone(), change_key(s));
        print_watched(args.output, s, wide, &mut header);
    }
    let mut outage = false;
    loop {
        match feed.next().await? {
            FeedEvent::Session { session, .. } => {
                outage = false;
                let key = change_key(&session);
                if shown.get(&session.session_id) != Some(&key) {
                    shown.insert(session.session_id.clone(), key);
                    print_watched(args.output, &session, wide, &mut header);
                }
            }
            FeedEvent::Reconnecting { why, .. } if !outage => {
                outage = true;
                eprintln!("[cliscale: {why}; resuming]");
            }
            FeedEvent::Reconnecting { .. } | FeedEvent::Ready { .. } => {}
        }
    }
}

/// What makes two sightings of a session different enough to print again. Pure.
fn change_key(s: &SessionView) -> String {
    format!("{}|{:?}|{:?}|{}", s.phase.as_str(), s.reason, s.exit_code, s.updated_at)
}

fn print_watched(format: Format, s: &SessionView, wide: bool, header: &mut bool) {
    use std::io::Write;
    match format {
        Format::Json => println!("{}", serde_json::to_string(s).expect("serializes")),
        Format::Yaml => print!("---\n{}", present::render(Format::Yaml, s)),
        Format::Table | Format::Wide => {
            print!(
                "{}",
                present::sessions_table(std::slice::from_ref(s), wide, !*header, SystemTime::now())
            );
            *header = true;
        }
    }
    let _ = std::io::stdout().flush();
}

#[derive(clap::Args)]
pub struct IdArgs {
    pub id: String,
}

#[derive(clap::Args)]
pub struct GetArgs {
    pub id: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

pub async fn get(args: GetArgs, globals: &Globals) -> Result<i32, Failure> {
    let session = globals.client()?.session(&args.id).await?;
    match args.output {
        Format::Table | Format::Wide => print!("{}", present::describe(&session)),
        format => print!("{}", present::render(format, &session)),
    }
    Ok(0)
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  cliscale logs SESSION\n  cliscale logs -f --plain SESSION\n  \
    cliscale logs --since 1048576 SESSION > rest.log"
)]
pub struct LogsArgs {
    pub id: String,
    /// Keep printing as the session writes, until it ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Start at this byte offset of the output.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Plain text: terminal escape sequences removed, line ends as `\n`.
    #[arg(long)]
    pub plain: bool,
}

pub async fn logs(args: LogsArgs, globals: &Globals) -> Result<i32, Failure> {
    let client = globals.client()?;
    let mut stdout = tokio::io::stdout();
    let write_err = |e: std::io::Error| Failure::local("writing output", e);
    if !args.follow {
        let range = OutputRange { since: Some(args.since), until: None, text: args.plain };
        let (_, mut body) = client.output(&args.id, range).await?;
        while let Some(chunk) = body.next().await {
            stdout.write_all(&chunk?).await.map_err(write_err)?;
        }
        stdout.flush().await.map_err(write_err)?;
        return Ok(0);
    }
    let mut stream = client.output_stream(&args.id, args.since);
    let mut plain = args.plain.then(cliscale_core::output::PlainText::default);
    let mut outage = false;
    while let Some(event) = stream.next().await? {
        match event {
            OutputEvent::Output { data, .. } => {
                let bytes = match &mut plain {
                    Some(text) => text.feed(&data),
                    None => data.to_vec(),
                };
                stdout.write_all(&bytes).await.map_err(write_err)?;
                stdout.flush().await.map_err(write_err)?;
                if outage {
                    outage = false;
                }
            }
            OutputEvent::Gap { from, to } => {
                let line = format!("[cliscale: {} bytes of output were not stored]\n", to - from);
                if plain.is_some() {
                    stdout.write_all(line.as_bytes()).await.map_err(write_err)?;
                } else {
                    eprint!("{line}");
                }
            }
            OutputEvent::Status(_) => {}
            OutputEvent::Reconnecting { why, .. } => {
                if !outage {
                    eprintln!("[cliscale: {why}; resuming]");
                    outage = true;
                }
            }
        }
    }
    if let Some(text) = plain {
        stdout.write_all(&text.finish()).await.map_err(write_err)?;
    }
    stdout.flush().await.map_err(write_err)?;
    Ok(0)
}

pub async fn cancel(args: IdArgs, globals: &Globals) -> Result<i32, Failure> {
    let session = globals.client()?.cancel_session(&args.id).await?;
    if session.phase.is_finished() {
        println!("{} had already ended ({})", session.session_id, session.phase.as_str());
    } else {
        println!("{} is being cancelled", session.session_id);
    }
    Ok(0)
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  cliscale open SESSION\n  cliscale open --view --no-browser SESSION"
)]
pub struct OpenArgs {
    pub id: String,
    /// A read-only link: it can watch, never type.
    #[arg(long)]
    pub view: bool,
    /// Only print the link.
    #[arg(long)]
    pub no_browser: bool,
}

pub async fn open(args: OpenArgs, globals: &Globals) -> Result<i32, Failure> {
    let scope = if args.view { TokenScope::View } else { TokenScope::Interact };
    let minted = globals.client()?.mint_token(&args.id, scope).await?;
    println!("{}", minted.terminal_url);
    // The link opens once and expires in minutes, so it is opened only where a browser is.
    if !args.no_browser
        && std::io::stdout().is_terminal()
        && webbrowser::open(&minted.terminal_url).is_err()
    {
        eprintln!("(no browser here: open the link above within {} s)", minted.expires_in_seconds);
    }
    Ok(0)
}

pub async fn recording(args: IdArgs, globals: &Globals) -> Result<i32, Failure> {
    let mut body = globals.client()?.recording(&args.id).await?;
    let mut stdout = tokio::io::stdout();
    while let Some(chunk) = body.next().await {
        stdout.write_all(&chunk?).await.map_err(|e| Failure::local("writing the recording", e))?;
    }
    stdout.flush().await.map_err(|e| Failure::local("writing the recording", e))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_cols_by_rows() {
        assert_eq!(parse_size("120x40"), Ok((120, 40)));
        assert!(parse_size("120").is_err());
        assert!(parse_size("axb").is_err());
    }

    #[test]
    fn one_word_is_a_command_line_and_several_are_quoted() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(command_line(&words(&["echo a; exit 3"])).unwrap(), "echo a; exit 3");
        assert_eq!(
            command_line(&words(&["ls", "my file", "$HOME"])).unwrap(),
            "ls 'my file' '$HOME'"
        );
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(60)), 60);
    }
}
