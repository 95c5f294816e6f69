//! `palaver admin …`: account administration from the command line, through
//! any node's admin API with the ops token (or an admin's token). The
//! first admin of a cluster is made here: nobody becomes admin by
//! registering first.

use anyhow::Context;
use anyhow::Result;
use palaver_client::Method;
use percent_encoding::NON_ALPHANUMERIC;
use percent_encoding::utf8_percent_encode;
use serde_json::Value;
use serde_json::json;

use crate::admin::OpsArgs;
use crate::admin::Target;

/// `palaver admin …`.
#[derive(clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand)]
enum AdminCommand {
    /// Make an account (asks for its password, or reads it with
    /// --password-stdin); --admin makes it an admin.
    CreateUser {
        /// The account's name (^[a-z0-9_.-]{3,32}$).
        #[arg(value_name = "NAME")]
        name: String,
        /// Make it an admin.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// List accounts (name, role, disabled, made at).
    Users {
        /// Only names starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// Disable an account: every session of it ends at once, on every node.
    Disable {
        /// The account's name.
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// Enable a disabled account.
    Enable {
        /// The account's name.
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// Make an invite code for registration in `invite` mode.
    Invite {
        /// Sign-ups the code admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Seconds the code stays valid.
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        ttl_secs: u64,
        #[command(flatten)]
        ops: OpsArgs,
    },
}

/// Runs one `palaver admin` command.
pub async fn run(args: AdminArgs) -> Result<()> {
    match args.command {
        AdminCommand::CreateUser { name, admin, password_stdin, ops } => {
            let password = if password_stdin {
                crate::password::from_stdin()?
            } else {
                crate::password::prompt(&format!("password for the new account {name}: "))?
            };
            let role = if admin { "admin" } else { "user" };
            let target = Target::new(&ops)?;
            let body = json!({"username": name, "password": password, "role": role});
            let made = target.change(Method::POST, "/api/admin/users", Some(&body)).await?;
            print(&ops, &made, || format!("made account {name} ({role})"))
        }
        AdminCommand::Users { prefix, limit, ops } => {
            let target = Target::new(&ops)?;
            let path =
                format!("/api/admin/users?prefix={}&limit={limit}", utf8_percent_encode(&prefix, NON_ALPHANUMERIC));
            let users = target.get(&path).await?;
            print(&ops, &users, || {
                let mut out = format!("{:<32}  {:<5}  {:<8}  created_at", "username", "role", "disabled");
                for u in users.as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "\n{:<32}  {:<5}  {:<8}  {}",
                        u["username"].as_str().unwrap_or("?"),
                        u["role"].as_str().unwrap_or("?"),
                        u["disabled"].as_bool().unwrap_or(false),
                        u["created_at"].as_u64().unwrap_or(0)
                    ));
                }
                out
            })
        }
        AdminCommand::Disable { name, ops } => {
            let target = Target::new(&ops)?;
            let done = target.change(Method::POST, &format!("/api/admin/users/{name}/disable"), None).await?;
            print(&ops, &done, || format!("disabled {name}; its sessions ended"))
        }
        AdminCommand::Enable { name, ops } => {
            let target = Target::new(&ops)?;
            let done = target.change(Method::POST, &format!("/api/admin/users/{name}/enable"), None).await?;
            print(&ops, &done, || format!("enabled {name}"))
        }
        AdminCommand::Invite { uses, ttl_secs, ops } => {
            let target = Target::new(&ops)?;
            let body = json!({"uses": uses, "ttl_secs": ttl_secs});
            let invite = target.change(Method::POST, "/api/admin/invites", Some(&body)).await?;
            let code = invite["code"].as_str().context("the answer has no code")?.to_string();
            print(&ops, &invite, || code.clone())
        }
    }
}

/// Prints `value` as JSON with `--json`, else the text `text` makes.
fn print(ops: &OpsArgs, value: &Value, text: impl FnOnce() -> String) -> Result<()> {
    if ops.json() {
        println!("{}", serde_json::to_string_pretty(value).context("encoding the answer")?);
    } else {
        println!("{}", text());
    }
    Ok(())
}
