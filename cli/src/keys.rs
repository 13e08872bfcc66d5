//! `cliscale keys`: API keys (admin keys only).

use clap::Subcommand;
use cliscale_client::rest::Role;

use crate::Globals;
use crate::fail::Failure;
use crate::present::{self, Format};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key. The key is printed once and never again.
    #[command(after_help = "Example:\n  cliscale keys create --name ci --role operator")]
    Create {
        /// What the key is for (1-128 characters).
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role, default_value = "operator")]
        role: Role,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// List the keys, without their secrets.
    Ls {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Revoke a key: its requests, links and open terminals stop working at once.
    Revoke { id: String },
    /// Change a key's role.
    SetRole {
        id: String,
        #[arg(value_parser = parse_role)]
        role: Role,
    },
}

fn parse_role(raw: &str) -> Result<Role, String> {
    Role::parse(raw).ok_or_else(|| format!("{raw:?} is not a role: admin, operator or viewer"))
}

pub async fn run(command: KeysCommand, globals: &Globals) -> Result<i32, Failure> {
    let client = globals.client()?;
    match command {
        KeysCommand::Create { name, role, output } => {
            let key = client.create_key(&name, role).await?;
            match output {
                Format::Table | Format::Wide => {
                    println!("{}", key.key.as_deref().unwrap_or_default());
                    eprintln!(
                        "key {} ({}, {}): shown once, keep it",
                        key.id,
                        key.name,
                        key.role.as_str()
                    );
                }
                format => print!("{}", present::render(format, &key)),
            }
        }
        KeysCommand::Ls { output } => {
            let keys = client.list_keys().await?.items;
            match output {
                Format::Table | Format::Wide => {
                    let mut rows = vec![
                        ["ID", "NAME", "ROLE", "CREATED", "REVOKED"].map(String::from).to_vec(),
                    ];
                    rows.extend(keys.into_iter().map(|k| {
                        vec![
                            k.id,
                            k.name,
                            k.role.as_str().to_owned(),
                            k.created_at,
                            k.revoked_at.unwrap_or_else(|| "-".into()),
                        ]
                    }));
                    print!("{}", present::table(&rows));
                }
                format => print!("{}", present::render(format, &keys)),
            }
        }
        KeysCommand::Revoke { id } => {
            client.revoke_key(&id).await?;
            println!("key {id} revoked");
        }
        KeysCommand::SetRole { id, role } => {
            let key = client.set_key_role(&id, role).await?;
            println!("key {} is now {}", key.id, key.role.as_str());
        }
    }
    Ok(0)
}
