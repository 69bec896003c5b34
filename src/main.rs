//! The `keygate` binary: parse the command line, set up logging, and hand
//! over to the library. Exit codes: 0 ok, 1 failure, 64 bad config or usage.

#[cfg(feature = "jemalloc")]
mod allocator;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use keygate::admin_client::AdminClient;
use keygate::audit::ChainVerifier;
use keygate::config::{Config, LogFormat};
use keygate::front::aws::ops;
use keygate::policy::{Front, ReadHistory};
use keygate::store::{sqlite::SqliteStore, Store};
use keygate::timestamp::Timestamp;

const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "Secrets broker with a human approval gate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run keygate with a config file.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; optionally explain how a request would be decided.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        explain: ExplainArgs,
    },
    /// Review held requests through the admin API.
    Requests {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: RequestsAction,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Args)]
struct ExplainArgs {
    /// Identity making the hypothetical request.
    #[arg(long, requires = "operation")]
    identity: Option<String>,
    /// Operation, e.g. GetSecretValue.
    #[arg(long, requires = "identity")]
    operation: Option<String>,
    /// Secret names the request touches (repeatable).
    #[arg(long = "resource")]
    resources: Vec<String>,
}

#[derive(Args)]
struct AdminArgs {
    /// Admin API address, e.g. http://127.0.0.1:8741
    #[arg(
        long,
        env = "KEYGATE_ADMIN_ADDR",
        default_value = "http://127.0.0.1:8741",
        global = true
    )]
    admin_addr: String,
    /// CA bundle (PEM) to trust for an https:// admin address with a private CA.
    #[arg(long, env = "KEYGATE_ADMIN_CA", global = true)]
    admin_ca: Option<PathBuf>,
    /// Approver bearer token.
    #[arg(
        long,
        env = "KEYGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
}

#[derive(Subcommand)]
enum RequestsAction {
    /// List requests (default: pending).
    List {
        #[arg(long, default_value = "pending")]
        state: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one request as JSON.
    Show { id: String },
    /// Approve a pending request.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        /// Narrow the grant to fewer uses than the rule allows.
        #[arg(long)]
        grant_uses: Option<u32>,
        /// Narrow the grant to a shorter window than the rule's, e.g. 5m.
        #[arg(long)]
        grant_window: Option<String>,
    },
    /// Walk pending requests one by one: approve, deny or skip each.
    Review,
    /// Print new requests and decisions as they happen.
    Watch {
        /// Print each event's raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deny a pending request (a reason is required).
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Verify the audit hash chain in the configured state store.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(&config).await,
            Command::Check { config, explain } => check(&config, &explain),
            Command::Requests { admin, action } => report(requests(admin, action).await),
            Command::Audit {
                action: AuditAction::Verify { config },
            } => verify(&config).await,
        }
    })
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: invalid config: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(&config);
    for failed in keygate::hardening::protect_process() {
        tracing::warn!(%failed, "could not apply a process protection; secrets could reach a core dump");
    }
    keygate::tls::install_default_provider();
    // Everything that can fail on config or state happens before any port is bound.
    let app = match keygate::app::App::build(&config).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))
    };
    let (workload, admin) = match (
        bind(config.server.listen).await,
        bind(config.server.admin_listen).await,
    ) {
        (Ok(w), Ok(a)) => (w, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        workload = %config.server.listen,
        workload_tls = config.server.tls.is_some(),
        admin = %config.server.admin_listen,
        admin_tls = config.server.admin_tls.is_some(),
        region = %config.server.region,
        "keygate listening"
    );
    app.run(workload, admin, shutdown_signal()).await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn check(path: &Path, explain: &ExplainArgs) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!(
        "config OK: {} identities, {} approvers, {} rules, default {:?}",
        config.identities.len(),
        config.approvers.len(),
        config.policy.rules.len(),
        config.policy.default
    );
    let (Some(identity), Some(operation)) = (&explain.identity, &explain.operation) else {
        return ExitCode::SUCCESS;
    };
    let Some(class) = ops::classify(operation) else {
        eprintln!(
            "error: unknown operation {operation:?}; known: {}",
            ops::names().collect::<Vec<_>>().join(", ")
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let groups = config
        .identities
        .iter()
        .find(|i| &i.name == identity)
        .map(|i| i.groups.clone())
        .unwrap_or_default();
    let request = keygate::policy::Request {
        identity,
        groups: &groups,
        front: Front::Aws,
        operation,
        class,
        resources: &explain.resources,
        facts: &keygate::policy::Facts::NONE,
    };
    for line in config
        .policy
        .explain(&request, &ReadHistory::default(), Timestamp::now())
    {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

async fn requests(admin: AdminArgs, action: RequestsAction) -> anyhow::Result<()> {
    let Some(token) = admin.token else {
        bail!("no approver token: pass --token or set KEYGATE_ADMIN_TOKEN");
    };
    let client = match &admin.admin_ca {
        Some(ca) => AdminClient::with_ca(&admin.admin_addr, &token, ca)?,
        None => AdminClient::new(&admin.admin_addr, &token),
    };
    match action {
        RequestsAction::List { state, json } => {
            let v = client
                .get(&format!("/admin/v1/requests?state={state}"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let empty = Vec::new();
            let list = v["requests"].as_array().unwrap_or(&empty);
            if list.is_empty() {
                println!("no {state} requests");
            }
            for r in list {
                println!("{}", summary(r));
            }
        }
        RequestsAction::Show { id } => {
            let v = client.get(&format!("/admin/v1/requests/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        RequestsAction::Approve {
            id,
            comment,
            grant_uses,
            grant_window,
        } => {
            let v = client
                .post(
                    &format!("/admin/v1/requests/{id}/approve"),
                    json!({ "comment": comment, "grant_uses": grant_uses, "grant_window": grant_window }),
                )
                .await?;
            println!(
                "approved {id}: state {}",
                v["state"].as_str().unwrap_or("?")
            );
        }
        RequestsAction::Review => {
            let stdin = std::io::stdin();
            let (approved, denied) =
                keygate::review_cli::review(&client, &mut stdin.lock(), &mut std::io::stdout())
                    .await?;
            println!("\nreviewed: {approved} approved, {denied} denied");
        }
        RequestsAction::Watch { json } => {
            keygate::review_cli::watch(&client, json, &mut std::io::stdout()).await?;
        }
        RequestsAction::Deny { id, reason } => {
            let v = client
                .post(
                    &format!("/admin/v1/requests/{id}/deny"),
                    json!({ "reason": reason }),
                )
                .await?;
            println!("denied {id}: state {}", v["state"].as_str().unwrap_or("?"));
        }
    }
    Ok(())
}

fn summary(r: &Value) -> String {
    let resources: Vec<&str> = r["resources"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!(
        "{}  {:<8}  {:<12}  {:<20}  {:<30}  rule={}  created={}",
        r["id"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
        r["identity"].as_str().unwrap_or("?"),
        r["operation"].as_str().unwrap_or("?"),
        if resources.is_empty() {
            "-".to_string()
        } else {
            resources.join(",")
        },
        r["rule"].as_str().unwrap_or("?"),
        r["created_at"].as_str().unwrap_or("?"),
    )
}

async fn verify(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !config.server.state.exists() {
        eprintln!("error: no state store at {}", config.server.state.display());
        return ExitCode::FAILURE;
    }
    let store = match SqliteStore::open(&config.server.state) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut verifier = ChainVerifier::default();
    let mut after = 0;
    loop {
        let rows = match store.audit_rows(after, 1000).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for row in &rows {
            if let Err(e) = verifier.push(row) {
                println!("audit log BROKEN: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "audit log OK: {} records, head {}",
        verifier.count(),
        verifier.head()
    );
    ExitCode::SUCCESS
}
