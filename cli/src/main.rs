//! `cliscale`: the user-facing command line. docs/cli.md is its reference.

mod attach;
mod config;
mod definitions;
mod fail;
mod keys;
mod present;
mod sessions;
mod up;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use cliscale_client::Client;

use crate::fail::{Failure, Outcome};

const EXAMPLES: &str = "\
Examples:
  cliscale up                                  # run cliscale on this machine
  cliscale login http://127.0.0.1:8080         # store a server and its API key
  cliscale run -- bash                         # a shell in a fresh session
  cliscale run --detach -- 'make test'         # start it and print its id and link
  cliscale ls --phase Running
  cliscale logs -f SESSION                     # follow its output, live or finished
  cliscale attach SESSION                      # type into it again (Ctrl-P Ctrl-Q leaves)
  cliscale open --view SESSION                 # a read-only browser link";

#[derive(Parser)]
#[command(
    name = "cliscale",
    version,
    about = "Run command-line sessions and drive them from a terminal or a browser",
    after_help = EXAMPLES
)]
struct Cli {
    /// The context to use (`cliscale config get-contexts` lists them).
    #[arg(long, global = true, env = "CLISCALE_CONTEXT")]
    context: Option<String>,
    /// The server's address; overrides the context's.
    #[arg(long, global = true, env = "CLISCALE_URL", value_name = "URL")]
    server: Option<String>,
    /// The API key; overrides the context's.
    #[arg(long, global = true, env = "CLISCALE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start cliscale on this machine: REST API, gateway and local executor on one address.
    Up(Box<up::UpArgs>),
    /// Store a server and its API key as a context, and make it the current one.
    #[command(after_help = "Examples:\n  cliscale login http://127.0.0.1:8080\n  \
        echo \"$KEY\" | cliscale login https://cliscale.example.com --name prod")]
    Login(LoginArgs),
    /// Manage contexts: named servers with their keys.
    #[command(
        subcommand,
        after_help = "Examples:\n  cliscale config get-contexts\n  cliscale config use-context prod"
    )]
    Config(ConfigCommand),
    /// Create a session and attach this terminal to it.
    Run(Box<sessions::RunArgs>),
    /// Attach this terminal to a session.
    Attach(attach::AttachArgs),
    /// List sessions, newest first.
    #[command(visible_alias = "list")]
    Ls(sessions::ListArgs),
    /// Show one session.
    #[command(
        after_help = "Examples:\n  cliscale get SESSION\n  cliscale get -o json SESSION | jq .exitCode"
    )]
    Get(sessions::GetArgs),
    /// The event log: one session's, or everything's, filtered by template, schedule, type,
    /// actor and time.
    Events(definitions::EventsArgs),
    /// Print a session's output, live or after it ended.
    Logs(sessions::LogsArgs),
    /// Cancel a session.
    #[command(after_help = "Example:\n  cliscale cancel SESSION")]
    Cancel(sessions::IdArgs),
    /// Mint a terminal link for a session, print it and open it in a browser.
    Open(sessions::OpenArgs),
    /// Write a session's asciicast v2 recording to standard output.
    #[command(
        after_help = "Example:\n  cliscale recording SESSION > session.cast && asciinema play session.cast"
    )]
    Recording(sessions::IdArgs),
    /// Manage API keys (admin keys only).
    #[command(
        subcommand,
        after_help = "Examples:\n  cliscale keys create --name ci --role operator\n  \
        cliscale keys ls\n  cliscale keys revoke KEY_ID"
    )]
    Keys(keys::KeysCommand),
    /// Secrets: values that reach commands as environment variables only.
    #[command(subcommand)]
    Secrets(definitions::SecretsCommand),
    /// Templates: named session definitions with parameters, retries and trigger tokens.
    #[command(
        subcommand,
        after_help = "Examples:\n  cliscale templates apply -f deploy.yaml\n  \
        cliscale run --template deploy -p TARGET=prod"
    )]
    Templates(definitions::TemplatesCommand),
    /// Schedules: templates run on cron.
    #[command(subcommand)]
    Schedules(definitions::SchedulesCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  cliscale completion bash > ~/.local/share/bash-completion/completions/cliscale\n  \
        cliscale completion zsh > \"${fpath[1]}/_cliscale\"\n  \
        cliscale completion fish > ~/.config/fish/completions/cliscale.fish"
    )]
    Completion { shell: clap_complete::Shell },
    /// Print the version.
    #[command(after_help = "Example:\n  cliscale version")]
    Version,
}

#[derive(clap::Args)]
struct LoginArgs {
    /// The server, e.g. http://127.0.0.1:8080.
    url: String,
    /// The context's name (default: the server's host and port).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Make a context the current one.
    UseContext { name: String },
    /// List the contexts; `*` marks the current one.
    GetContexts,
    /// Print the current context's name.
    CurrentContext,
    /// Forget a context and its key.
    DeleteContext { name: String },
}

/// The server and key a command acts with, from the flags, the environment and the config.
pub struct Globals {
    overrides: config::Overrides,
    config_path: PathBuf,
}

impl Globals {
    pub fn client(&self) -> Result<Client, Failure> {
        let config = config::load(&self.config_path)?;
        let target = config::resolve(&config, &self.overrides)?;
        Ok(Client::new(&target.url, target.api_key)?)
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { Outcome::Usage.code() } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let globals = Globals {
        overrides: config::Overrides {
            server: cli.server,
            api_key: cli.api_key,
            context: cli.context,
        },
        config_path: config::path(),
    };
    let code = match cli.command {
        Command::Version => {
            println!("cliscale {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cliscale", &mut std::io::stdout());
            0
        }
        Command::Up(args) => run_up(*args),
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            let result = runtime.block_on(dispatch(command, &globals));
            // Standard input is read on a blocking thread that no shutdown can interrupt; a
            // normal shutdown would wait for the next key press.
            runtime.shutdown_background();
            match result {
                Ok(code) => code,
                Err(failure) => {
                    eprintln!("cliscale: {}", failure.message);
                    failure.outcome.code()
                }
            }
        }
    };
    std::process::exit(code);
}

async fn dispatch(command: Command, globals: &Globals) -> Result<i32, Failure> {
    match command {
        Command::Login(args) => login(args, globals).await,
        Command::Config(command) => config_command(command, globals),
        Command::Run(args) => sessions::run(*args, globals).await,
        Command::Attach(args) => attach::attach_command(args, globals).await,
        Command::Ls(args) => sessions::list(args, globals).await,
        Command::Get(args) => sessions::get(args, globals).await,
        Command::Events(args) => definitions::events(args, globals).await,
        Command::Secrets(command) => definitions::secrets(command, globals).await,
        Command::Templates(command) => definitions::templates(command, globals).await,
        Command::Schedules(command) => definitions::schedules(command, globals).await,
        Command::Logs(args) => sessions::logs(args, globals).await,
        Command::Cancel(args) => sessions::cancel(args, globals).await,
        Command::Open(args) => sessions::open(args, globals).await,
        Command::Recording(args) => sessions::recording(args, globals).await,
        Command::Keys(command) => keys::run(command, globals).await,
        Command::Up(_) | Command::Version | Command::Completion { .. } => unreachable!(),
    }
}

fn run_up(args: up::UpArgs) -> i32 {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLISCALE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal; a log file or a pipe gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(up::run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cliscale up: {e:#}");
            1
        }
    }
}

/// Reads the API key (flag, environment, or a prompt that does not echo, or standard input),
/// checks it against the server, and stores the context.
async fn login(args: LoginArgs, globals: &Globals) -> Result<i32, Failure> {
    let key = match globals.overrides.api_key.clone() {
        Some(key) => key,
        None if std::io::stdin().is_terminal() => {
            rpassword::prompt_password(format!("API key for {}: ", args.url))
                .map_err(|e| Failure::local("reading the key", e))?
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| Failure::local("reading the key", e))?;
            line
        }
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(Failure::new(Outcome::Usage, "no API key was given"));
    }
    let client = Client::new(&args.url, Some(key.clone()))?;
    let query = cliscale_client::rest::ListQuery { limit: Some(1), ..Default::default() };
    client.list_sessions(&query).await?;
    let mut config = config::load(&globals.config_path)?;
    let name = args.name.unwrap_or_else(|| config::name_for(&args.url));
    let url = client.base().as_str().trim_end_matches('/').to_owned();
    config.contexts.insert(name.clone(), config::Context { url, api_key: Some(key) });
    config.current_context = Some(name.clone());
    config::save(&globals.config_path, &config)?;
    eprintln!("logged in to {} as context {name:?} ({})", args.url, globals.config_path.display());
    Ok(0)
}

fn config_command(command: ConfigCommand, globals: &Globals) -> Result<i32, Failure> {
    let path = &globals.config_path;
    let mut config = config::load(path)?;
    let unknown =
        |name: &str| Failure::new(Outcome::Config, format!("there is no context named {name:?}"));
    match command {
        ConfigCommand::UseContext { name } => {
            if !config.contexts.contains_key(&name) {
                return Err(unknown(&name));
            }
            config.current_context = Some(name);
            config::save(path, &config)?;
        }
        ConfigCommand::GetContexts => {
            let mut rows = vec![vec!["CURRENT".into(), "NAME".into(), "SERVER".into()]];
            for (name, context) in &config.contexts {
                let current = config.current_context.as_deref() == Some(name);
                rows.push(vec![
                    if current { "*".into() } else { String::new() },
                    name.clone(),
                    context.url.clone(),
                ]);
            }
            print!("{}", present::table(&rows));
        }
        ConfigCommand::CurrentContext => match &config.current_context {
            Some(name) => println!("{name}"),
            None => return Err(Failure::new(Outcome::Config, "no context is current")),
        },
        ConfigCommand::DeleteContext { name } => {
            if config.contexts.remove(&name).is_none() {
                return Err(unknown(&name));
            }
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            config::save(path, &config)?;
        }
    }
    Ok(0)
}
