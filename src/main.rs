//! The `billing-worker` binary: parse the command line, load settings, run.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use billing_worker::app::Application;
use billing_worker::clock::SystemClock;
use billing_worker::settings::Settings;
use billing_worker::{store, telemetry};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "billing-worker",
    version,
    about = "Usage-based billing worker over RabbitMQ and Postgres"
)]
struct Cli {
    /// Folder holding default.toml and the per-environment overlays.
    #[arg(long, env = "BILLING_CONFIG_DIR", default_value = "config", global = true)]
    config_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply migrations, declare the topology and run every role until SIGTERM.
    Run,
    /// Apply pending migrations and exit.
    Migrate,
    /// Publish one message to billing.in as a merchant and print the answer.
    Send {
        /// The tenant (x-merchantid header).
        #[arg(long)]
        merchant: String,
        /// Routing key on billing.in: provisioning.* or usage.*.
        #[arg(long, default_value = "provisioning.cli")]
        routing_key: String,
        /// The message_id that keys the command: repeats with the same id are
        /// answered the same and act once. Default: a fresh one per call.
        #[arg(long)]
        message_id: Option<String>,
        /// Publish without waiting for an answer (usage events have none).
        #[arg(long)]
        no_reply: bool,
        /// How long to wait for the answer.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// The JSON body, or - to read it from standard input.
        body: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config_dir) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("billing-worker: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("billing-worker: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "billing-worker failed");
            eprintln!("billing-worker: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Cmd, settings: Settings) -> anyhow::Result<()> {
    match command {
        Cmd::Migrate => {
            let pool = store::pool(&settings.database)?;
            store::migrate(&pool).await.context("apply migrations")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Cmd::Send {
            merchant,
            routing_key,
            message_id,
            no_reply,
            timeout,
            body,
        } => {
            let body = if body == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("read standard input")?;
                buf
            } else {
                body.into_bytes()
            };
            let request = billing_worker::client::Request {
                merchant_id: merchant,
                routing_key,
                body,
                message_id,
                wait: (!no_reply).then_some(timeout),
            };
            let text = match billing_worker::client::send(&settings, request).await? {
                Some(answer) => serde_json::to_string_pretty(&answer)?,
                None => "published".to_string(),
            };
            // A reader that stops early (`| head`) is not an error.
            match writeln!(std::io::stdout(), "{text}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Cmd::Run => {
            let app = Application::build(settings, Arc::new(SystemClock)).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app.run(shutdown).await
        }
    }
}

/// Fires `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for signals; stop the worker with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
