//! The `forewarn` command line. Thin: parse arguments, set up logging,
//! turn signals into a cancellation token, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use forewarn::config::Config;
use forewarn::rules::{load_rules, LoadOptions};

#[derive(Parser)]
#[command(
    name = "forewarn",
    version,
    about = "Proactive-support alerting: Kafka events in, rules in TOML, messages out before customers complain."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// The daemon config (TOML). Keys can be overridden with FOREWARN__SECTION__KEY.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate rules and templates (and the config, when given). Exit code 1 on any error.
    Check {
        /// The rules folder. Default: rules.dir from --config, else ./rules.
        dir: Option<PathBuf>,
        /// Also validate this daemon config, and the rules' channels against it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Produce JSON events (one per line) from a file to a Kafka topic: for demos and tests.
    Produce {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        /// A JSONL file; `-` reads standard input.
        file: PathBuf,
        /// Field whose value becomes the record key (dotted path).
        #[arg(long, default_value = "customer_id")]
        key: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::Check { dir, config } => check(dir, config),
            Command::Produce {
                brokers,
                topic,
                file,
                key,
            } => produce(brokers, topic, file, key).await,
        }
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FOREWARN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: PathBuf) -> ExitCode {
    let config = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    match forewarn::daemon::run(config, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error_code = "daemon_failed", "{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT cancel the token; a second signal exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            error_code = "signal_setup_failed",
            "cannot install signal handlers"
        );
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

fn check(dir: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    let mut ok = true;
    let mut channels = None;
    let mut rules_dir = dir.clone().unwrap_or_else(|| PathBuf::from("rules"));
    if let Some(path) = config {
        match Config::load(&path) {
            Ok(cfg) => {
                channels = Some(cfg.channels.keys().cloned().collect());
                if dir.is_none() {
                    rules_dir = cfg.rules_dir.clone();
                }
                println!("{}: config ok", path.display());
            }
            Err(e) => {
                print!("{e}");
                ok = false;
            }
        }
    }
    match load_rules(&rules_dir, &LoadOptions { channels }) {
        Ok(loaded) => {
            println!(
                "{}: {} rule{} and {} template{} ok",
                rules_dir.display(),
                loaded.rules.len(),
                if loaded.rules.len() == 1 { "" } else { "s" },
                loaded.templates.names().len(),
                if loaded.templates.names().len() == 1 {
                    ""
                } else {
                    "s"
                },
            );
        }
        Err(diags) => {
            println!("{diags}");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn produce(brokers: String, topic: String, file: PathBuf, key: String) -> ExitCode {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::io::BufRead;
    let key_path = match forewarn::event::FieldPath::parse(&key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: --key {key:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        match std::fs::File::open(&file) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("error: cannot open {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    };
    let producer: FutureProducer = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.timeout.ms", "10000")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot create a Kafka producer for {brokers}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sent = 0usize;
    for (n, line) in reader.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: reading line {}: {e}", n + 1);
                return ExitCode::FAILURE;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        // Invalid JSON is sent as-is on purpose: it exercises dead-lettering.
        let record_key = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| key_path.get_text(&v));
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(&topic).payload(&line);
        if let Some(k) = &record_key {
            record = record.key(k);
        }
        if let Err((e, _)) = producer
            .send(record, std::time::Duration::from_secs(10))
            .await
        {
            eprintln!(
                "error: line {}: cannot produce to {topic:?} on {brokers}: {e}",
                n + 1
            );
            return ExitCode::FAILURE;
        }
        sent += 1;
    }
    println!(
        "produced {sent} event{} to {topic}",
        if sent == 1 { "" } else { "s" }
    );
    ExitCode::SUCCESS
}
