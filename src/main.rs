//! The `forewarn` command line. Thin: parse arguments, set up logging,
//! turn signals into a cancellation token, call the library.

use std::path::{Path, PathBuf};
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
        /// Start even though the state store is damaged (it is moved aside,
        /// never deleted) or missing while the consumer group has made
        /// progress. Open deadlines in the lost state are lost.
        #[arg(long)]
        reset_state: bool,
    },
    /// Validate rules and templates (and the config, when given). Exit code 1 on any error.
    Check {
        /// The rules folder. Default: rules.dir from --config, else ./rules.
        dir: Option<PathBuf>,
        /// Also validate this daemon config, and the rules' channels against it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the rule tests in DIR/tests/*.toml: events in, expected decisions out. Exit code 1 on a failure.
    Test {
        /// The rules folder (tests in its tests/ folder). Default: rules.dir from --config, else ./rules.
        dir: Option<PathBuf>,
        /// A daemon config, for the event field paths, address path and contact policy.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Run only the tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Run the engine in virtual time over recorded events and report what would have been sent.
    Replay {
        /// Recorded events, one JSON object per line (gzip-compressed or not).
        #[arg(long)]
        events: PathBuf,
        /// The rules folder. Default: rules.dir from --config, else ./rules.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// A daemon config, for the event field paths, address path and allowed_lateness.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where to write the would-be messages (.eml).
        #[arg(long, default_value = "replay-out")]
        out: PathBuf,
        /// Do not write messages, only report.
        #[arg(long)]
        no_write: bool,
        /// Also list every decision.
        #[arg(long)]
        list: bool,
        /// Let time run on to this RFC 3339 time (or `now`) after the last event, so later deadlines fire too.
        #[arg(long)]
        until: Option<String>,
        /// Replay the same events through this second rules folder too, and
        /// show how it differs: outcome counts, and which customers would
        /// gain or lose a message. Messages written are the new rules'.
        #[arg(long, value_name = "NEW_RULES_DIR")]
        compare: Option<PathBuf>,
        /// Also write a report page (HTML, opens offline in any browser): outcomes, sends per hour, time from trigger to send, what was held back, sample messages.
        #[arg(long, value_name = "FILE.html", conflicts_with = "compare")]
        report: Option<PathBuf>,
    },
    /// Does a rule help? Compare how often notified and holdout customers went on to do an outcome event.
    Report {
        /// The rule id.
        #[arg(long)]
        rule: String,
        /// The event type that counts as success, e.g. order_placed.
        #[arg(long)]
        outcome_event: String,
        /// How long after the rule's decision the outcome counts, e.g. 24h or 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        within: std::time::Duration,
        /// The daemon config: state.dir, admin.listen and token, the event fields, the Kafka topics.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Read the events from this JSONL file (gzip-compressed or not) instead of the configured Kafka topics.
        #[arg(long)]
        events: Option<PathBuf>,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Preview a rule's message from one sample event: its headers and text here, and a page to open in a browser.
    Render {
        /// The rule id.
        #[arg(long)]
        rule: String,
        /// One event as JSON (the shape the topic carries).
        #[arg(long)]
        event: PathBuf,
        /// The rules folder. Default: rules.dir from --config, else ./rules.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// The daemon config: event field paths, the channels and the consent field (without it, every rule previews as an email).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The customer's profile as JSON (what the profiles topic holds: name, email, timezone, consent, …).
        #[arg(long, value_name = "FILE.json")]
        profile: Option<PathBuf>,
        /// Where to write the preview page. Default: render-out/<rule id>.html. With --raw: where to write the wire text (say, a .eml file) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print exactly what goes on the wire (the MIME email, the webhook request, the Kafka record) and write no page; with --out, write it to that file.
        #[arg(long)]
        raw: bool,
    },
    /// Why did (or didn't) a customer get a message? Prints their decision log.
    Explain {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// The daemon config (state.dir, admin.listen, admin token).
        #[arg(long, short)]
        config: PathBuf,
        /// At most this many of the newest decisions.
        #[arg(long, default_value_t = 200)]
        limit: usize,
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Erase everything forewarn holds about a customer (GDPR): profile,
    /// ledgers, open episodes, pending notifications, decision log.
    Forget {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// The daemon config (state.dir, rules.dir, admin.listen, admin token).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List, show, re-drive or purge dead letters (notifications that failed for good).
    DeadLetters {
        /// The daemon config (state.dir, admin.listen).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Produce JSON events (one per line) from a file to a Kafka topic: for demos and tests.
    Produce {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        /// A JSONL file (gzip-compressed or not); `-` reads standard input.
        file: PathBuf,
        /// Field whose value becomes the record key (dotted path).
        #[arg(long, default_value = "customer_id")]
        key: String,
        /// Shift every time field so the latest event time becomes now, keeping the gaps
        /// (recorded events then look like they just happened).
        #[arg(long)]
        rebase_time: bool,
        /// Time fields shifted by --rebase-time; the first is the event time.
        #[arg(long = "time-field", default_values_t = vec!["ts".to_string()])]
        time_fields: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// One line per dead letter, oldest first.
    List,
    /// Everything about one dead letter, with its message.
    Show { id: String },
    /// Put dead letters back in the outbox for a fresh round of attempts.
    Redrive {
        /// Notification ids.
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete dead letters for good.
    Purge {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// mimalloc, with large pages: see `forewarn::alloc` for why.
#[global_allocator]
static ALLOCATOR: forewarn::alloc::Allocator = forewarn::alloc::Allocator;

fn main() -> ExitCode {
    forewarn::alloc::tune();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        quiet_on_closed_pipe();
    }
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
            Command::Run {
                config,
                reset_state,
            } => run(config, reset_state).await,
            Command::Check { dir, config } => check(dir, config),
            Command::Test {
                dir,
                config,
                filter,
            } => test(dir, config, filter),
            Command::Replay {
                events,
                rules,
                config,
                out,
                no_write,
                list,
                until,
                compare,
                report,
            } => {
                replay(
                    events,
                    rules,
                    config,
                    (!no_write).then_some(out),
                    list,
                    until,
                    compare,
                    report,
                )
                .await
            }
            Command::Report {
                rule,
                outcome_event,
                within,
                config,
                events,
                json,
            } => report(rule, outcome_event, within, config, events, json).await,
            Command::Render {
                rule,
                event,
                rules,
                config,
                profile,
                out,
                raw,
            } => render(
                RenderArgs {
                    rule,
                    event,
                    rules,
                    config,
                    profile,
                },
                match raw {
                    true => RenderTo::Wire(out),
                    false => RenderTo::Page(out.unwrap_or_default()),
                },
            ),
            Command::DeadLetters { config, action } => dead_letters(config, action).await,
            Command::Explain {
                customer,
                config,
                limit,
                json,
            } => explain(customer, config, limit, json).await,
            Command::Forget { customer, config } => forget(customer, config).await,
            Command::Produce {
                brokers,
                topic,
                file,
                key,
                rebase_time,
                time_fields,
            } => {
                produce(
                    brokers,
                    topic,
                    file,
                    key,
                    rebase_time.then_some(time_fields),
                )
                .await
            }
        }
    })
}

/// The tools (not the daemon) end quietly when what reads their output
/// goes away (`forewarn replay … | head`), as command-line tools do,
/// instead of panicking on the closed pipe. Rust ignores SIGPIPE; this
/// restores the default for the process.
fn quiet_on_closed_pipe() {
    // SAFETY: called at start-up, before any thread exists; SIG_DFL is a
    // valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Shifts `fields` of every JSON line so the latest first-field time is now.
/// Lines that are not JSON objects are left as they are. Returns the shift (ms).
fn rebase_times(lines: &mut [String], fields: &[String]) -> Result<i64, String> {
    use forewarn::event::{format_time, parse_time, FieldPath};
    let paths: Vec<FieldPath> = fields
        .iter()
        .map(|f| FieldPath::parse(f))
        .collect::<Result<_, _>>()?;
    let Some(event_time) = paths.first() else {
        return Err("name at least one --time-field".into());
    };
    let mut parsed: Vec<Option<serde_json::Value>> =
        lines.iter().map(|l| serde_json::from_str(l).ok()).collect();
    let latest = parsed
        .iter()
        .flatten()
        .filter_map(|v| event_time.get(v).and_then(parse_time))
        .max()
        .ok_or_else(|| format!("no line has a `{event_time}` time"))?;
    let shift = forewarn::event::now_millis() - latest;
    for (line, value) in lines.iter_mut().zip(parsed.iter_mut()) {
        let Some(v) = value else { continue };
        for p in &paths {
            let Some(t) = p.get(v).and_then(parse_time) else {
                continue;
            };
            let (last, parents) = p.segments().split_last().expect("paths have a segment");
            let mut cur = &mut *v;
            for seg in parents {
                cur = &mut cur[seg.as_str()];
            }
            cur[last.as_str()] = serde_json::Value::String(format_time(t + shift));
        }
        *line = v.to_string();
    }
    Ok(shift)
}

/// The config at `path`, or exit code 2 after printing why.
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(2)
    })
}

struct RenderArgs {
    rule: String,
    event: PathBuf,
    rules: Option<PathBuf>,
    config: Option<PathBuf>,
    profile: Option<PathBuf>,
}

/// Where `forewarn render` puts what it renders.
enum RenderTo {
    /// The terminal card, and the preview page at this path (empty: the
    /// default place).
    Page(PathBuf),
    /// `--raw`: the wire text only, to this file or else standard output.
    Wire(Option<PathBuf>),
}

fn render(args: RenderArgs, to: RenderTo) -> ExitCode {
    use forewarn::event::{EventSchema, FieldPath};
    use forewarn::render::{render, RenderOptions};
    let p = |s: &str| FieldPath::parse(s).expect("built-in paths are valid");
    let RenderArgs {
        rule,
        event,
        rules,
        config,
        profile,
    } = args;
    let opts = match config {
        Some(path) => match load_config(&path) {
            Ok(c) => RenderOptions {
                rule,
                event,
                rules_dir: rules.unwrap_or(c.rules_dir.clone()),
                schema: c.events.clone(),
                email: c.customers.email.clone(),
                channels: Some(c.channels.clone()),
                unsubscribe_url: c.customers.unsubscribe_url.clone(),
                policy: c.policy.clone(),
                profile,
            },
            Err(code) => return code,
        },
        None => RenderOptions {
            rule,
            event,
            rules_dir: rules.unwrap_or_else(|| PathBuf::from("rules")),
            schema: EventSchema::conventional(),
            email: p("customer.email"),
            channels: None,
            unsubscribe_url: None,
            policy: Default::default(),
            profile,
        },
    };
    if opts.channels.is_none() {
        eprintln!("note: no --config, so every rule previews as an email from {}; pass --config to see the configured channel", forewarn::config::DEFAULT_FROM);
    }
    let previews = match render(&opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let page = match to {
        RenderTo::Page(page) => page,
        RenderTo::Wire(file) => {
            // --raw: the wire only. Several messages (a catalog rule, say)
            // are each introduced on standard error, so the wire text
            // stays exactly what is sent.
            let many = previews.len() > 1;
            let mut wire = String::new();
            for (i, p) in previews.iter().enumerate() {
                if many || p.outcome != "sent" {
                    eprintln!(
                        "--- message {} of {}: channel {:?}, notification {}{}",
                        i + 1,
                        previews.len(),
                        p.channel,
                        p.notification_id,
                        if p.outcome == "shadow" {
                            " (shadow mode: rendered, never sent)"
                        } else {
                            ""
                        }
                    );
                }
                wire.push_str(&p.view.wire);
                if !p.view.wire.ends_with('\n') {
                    wire.push('\n');
                }
            }
            let Some(file) = file else {
                print!("{wire}");
                return ExitCode::SUCCESS;
            };
            let written = file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&file, &wire));
            return match written {
                Ok(()) => {
                    eprintln!(
                        "wrote {} ({} message{}, {} bytes)",
                        file.display(),
                        previews.len(),
                        if many { "s" } else { "" },
                        wire.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "error: cannot write {}: {e}; check that the folder is writable, or leave out --out to print the wire text",
                        file.display()
                    );
                    ExitCode::FAILURE
                }
            };
        }
    };
    for (i, p) in previews.iter().enumerate() {
        if previews.len() > 1 {
            println!("════ message {} of {} ════", i + 1, previews.len());
        }
        print!("{}", p.view.terminal());
        println!();
    }
    let page = match page.as_os_str().is_empty() {
        true => Path::new("render-out").join(format!("{}.html", opts.rule)),
        false => page,
    };
    let views: Vec<_> = previews.into_iter().map(|p| p.view).collect();
    let html = match forewarn::preview::page(&format!("Preview of rule {}", opts.rule), &views) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot build the preview page: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match write_page(&page, &html) {
        Ok(url) => {
            println!(
                "preview page ({}): {url}",
                forewarn::preview::page_shows(&views)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `html` to `path` (creating its folder) and returns its
/// `file://` URL, for the terminal to show.
fn write_page(path: &Path, html: &str) -> Result<String, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create the folder {} for {}: {e}; choose another place with --out FILE",
                dir.display(),
                path.display()
            )
        })?;
    }
    std::fs::write(path, html).map_err(|e| {
        format!(
            "cannot write {}: {e}; choose another place with --out FILE",
            path.display()
        )
    })?;
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    // Percent-encoded, so a path with spaces is still one clickable link.
    let url: String = abs
        .to_string_lossy()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    Ok(format!("file://{url}"))
}

/// The config, and the way to its state: the store when the daemon is
/// stopped, its admin API when it runs.
fn open_access(
    path: &std::path::Path,
) -> Result<(Config, forewarn::dead_letters::Access), ExitCode> {
    let cfg = load_config(path)?;
    match forewarn::dead_letters::Access::open(
        &cfg.state_dir,
        cfg.admin_listen,
        cfg.admin_token.clone(),
    ) {
        Ok(a) => Ok((cfg, a)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

async fn explain(customer: String, path: PathBuf, limit: usize, json: bool) -> ExitCode {
    let (_, access) = match open_access(&path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let records = match access.decisions(&customer, limit).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    if records.is_empty() {
        println!("no decisions recorded for customer {customer:?}: no rule has fired for them (within state.decision_log_retention), or the id is spelled differently in the events");
        return ExitCode::SUCCESS;
    }
    println!(
        "decisions for customer {customer:?}, oldest first ({} shown):\n",
        records.len()
    );
    for r in &records {
        println!("{}\n", r.describe());
    }
    ExitCode::SUCCESS
}

async fn forget(customer: String, path: PathBuf) -> ExitCode {
    let (cfg, access) = match open_access(&path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let rules_dir = cfg.rules_dir.clone();
    let retain = cfg.policy.retained_fields(&cfg.customers.email);
    let offline = |store: &forewarn::state::Store| {
        let loaded = forewarn::rules::load_rules(&rules_dir, &Default::default()).map_err(|d| {
            forewarn::state::StoreError::Db(format!(
                "the rules in {} are needed to read the engine state, and they do not load:\n{d}",
                rules_dir.display()
            ))
        })?;
        forewarn::forget::offline(store, std::sync::Arc::new(loaded.rules), &retain, &customer)
    };
    match access.forget(&customer, offline).await {
        Ok(erased) => {
            println!("{} (through {})", erased.summary(), access.describe());
            if cfg.customers.profiles_topic.is_some() {
                println!("note: the profile comes back if the profiles topic still carries it: produce a tombstone for the customer's key there too");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dead_letters(config: Option<PathBuf>, action: DeadLetterAction) -> ExitCode {
    let Some(path) = config else {
        eprintln!("error: pass --config FILE: dead letters live in that config's state.dir");
        return ExitCode::from(2);
    };
    let (_, access) = match open_access(&path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let ids = |ids: Vec<String>, all: bool| -> Option<Vec<String>> {
        if ids.is_empty() && !all {
            eprintln!("error: name the notification ids, or pass --all");
            None
        } else {
            Some(ids)
        }
    };
    let result = match action {
        DeadLetterAction::List => access.list().await.map(|list| {
            if list.is_empty() {
                println!("no dead letters ({})", access.describe());
            }
            for d in list {
                println!(
                    "{}  {}  rule={} channel={} attempts={}  {:?}\n    reason: {}",
                    d.id, d.dead_at, d.rule, d.channel, d.attempts, d.subject, d.reason
                );
            }
        }),
        DeadLetterAction::Show { id } => access.show(&id).await.map(|d| {
            println!(
                "{}",
                serde_json::to_string_pretty(&d).unwrap_or_else(|e| e.to_string())
            );
        }),
        DeadLetterAction::Redrive { ids: given, all } => {
            let Some(given) = ids(given, all) else {
                return ExitCode::from(2);
            };
            access.redrive(&given).await.map(|moved| {
                println!(
                    "re-driven through {}: {} notification(s)",
                    access.describe(),
                    moved.len()
                );
                for id in moved {
                    println!("  {id}");
                }
            })
        }
        DeadLetterAction::Purge { ids: given, all } => {
            let Some(given) = ids(given, all) else {
                return ExitCode::from(2);
            };
            access.purge(&given).await.map(|gone| {
                println!("purged: {} dead letter(s)", gone.len());
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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

async fn run(config: PathBuf, reset_state: bool) -> ExitCode {
    let config = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let options = forewarn::daemon::StartOptions { reset_state };
    let started = forewarn::daemon::Daemon::start_with(config, options, shutdown).await;
    let result = match started {
        Ok(daemon) => {
            tokio::spawn(reload_on_sighup(std::sync::Arc::clone(&daemon.reload)));
            daemon.wait().await
        }
        Err(e) => Err(e),
    };
    match result {
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

/// SIGHUP reloads the rules (as a change in the rules folder does).
async fn reload_on_sighup(reload: std::sync::Arc<tokio::sync::Notify>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!(
            error_code = "signal_setup_failed",
            "cannot install the SIGHUP handler; rules still reload when their folder changes"
        );
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the rules");
        reload.notify_one();
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
            let plural =
                |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
            println!(
                "{}: {}, {} and {} ok",
                rules_dir.display(),
                plural(loaded.rules.len(), "rule"),
                plural(loaded.templates.names().len(), "template"),
                plural(loaded.catalogs.len(), "catalog"),
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

/// What running rules in virtual time (replay, test) takes from a daemon
/// config, or the defaults without one.
struct VirtualSettings {
    schema: forewarn::event::EventSchema,
    email: forewarn::event::FieldPath,
    engine: forewarn::engine::EngineConfig,
    rules_dir: PathBuf,
    addressless_channels: std::collections::BTreeSet<String>,
    policy: forewarn::policy::PolicyConfig,
    unsubscribe_url: Option<String>,
    /// The config's channels (none without a config).
    channels: Option<std::collections::BTreeMap<String, forewarn::config::ChannelConfig>>,
}

/// `None` after printing the config's problems.
fn virtual_settings(config: Option<&Path>) -> Option<VirtualSettings> {
    use forewarn::engine::EngineConfig;
    use forewarn::event::{EventSchema, FieldPath};
    Some(match config {
        Some(path) => match Config::load(path) {
            Ok(c) => VirtualSettings {
                schema: c.events.clone(),
                email: c.customers.email.clone(),
                engine: c.engine(false),
                rules_dir: c.rules_dir.clone(),
                addressless_channels: c.addressless_channels(),
                policy: c.policy.clone(),
                unsubscribe_url: c.customers.unsubscribe_url.clone(),
                channels: Some(c.channels.clone()),
            },
            Err(e) => {
                eprint!("{e}");
                return None;
            }
        },
        None => {
            let p = |s: &str| FieldPath::parse(s).expect("built-in paths are valid");
            VirtualSettings {
                schema: EventSchema::conventional(),
                email: p("customer.email"),
                engine: EngineConfig::default(),
                rules_dir: PathBuf::from("rules"),
                addressless_channels: Default::default(),
                policy: Default::default(),
                unsubscribe_url: None,
                channels: None,
            }
        }
    })
}

/// `forewarn test`: exit 0 when every test passes, 1 on a failure, 2 when
/// the config, rules or test files are invalid.
fn test(dir: Option<PathBuf>, config: Option<PathBuf>, filter: Option<String>) -> ExitCode {
    use forewarn::ruletest::{check_rule_names, load_tests, run_all, Suite};
    let Some(settings) = virtual_settings(config.as_deref()) else {
        return ExitCode::from(2);
    };
    let rules_dir = dir.unwrap_or(settings.rules_dir);
    let loaded = match load_rules(&rules_dir, &LoadOptions::default()) {
        Ok(l) => l,
        Err(d) => {
            println!("{d}");
            return ExitCode::from(2);
        }
    };
    let tests_dir = rules_dir.join("tests");
    let tests = match load_tests(&tests_dir, &settings.schema) {
        Ok(t) => t,
        Err(d) => {
            println!("{d}");
            return ExitCode::from(2);
        }
    };
    let unknown = check_rule_names(&tests, &loaded.rules);
    if !unknown.0.is_empty() {
        println!("{unknown}");
        return ExitCode::from(2);
    }
    let suite = Suite {
        rules: std::sync::Arc::new(loaded.rules),
        templates: &loaded.templates,
        schema: settings.schema,
        email: settings.email,
        engine: settings.engine,
        policy: settings.policy,
        unsubscribe_url: settings.unsubscribe_url,
        addressless_channels: settings.addressless_channels,
    };
    let mut out = String::new();
    let (passed, failed) = run_all(&suite, &tests, filter.as_deref(), &mut out);
    print!("{out}");
    if let (Some(f), 0) = (&filter, passed + failed) {
        // Nothing ran: a typo, not a pass.
        eprintln!(
            "error: no test matches --filter {f:?} (it matches test names and test file names, e.g. --filter checkout-dropoff); {} tests in {}",
            tests.len(),
            tests_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let of = match &filter {
        Some(f) => format!(
            "{} of {} tests in {} match --filter {f:?}",
            passed + failed,
            tests.len(),
            tests_dir.display()
        ),
        None => format!("{} tests in {}", tests.len(), tests_dir.display()),
    };
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed ({of})",
        if failed == 0 { "ok" } else { "FAILED" },
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[allow(clippy::too_many_arguments)]
async fn replay(
    events: PathBuf,
    rules: Option<PathBuf>,
    config: Option<PathBuf>,
    out: Option<PathBuf>,
    list: bool,
    until: Option<String>,
    compare: Option<PathBuf>,
    report_page: Option<PathBuf>,
) -> ExitCode {
    let until = match until.as_deref() {
        None => None,
        Some("now") => Some(forewarn::event::now_millis()),
        Some(t) => match t.parse::<jiff::Timestamp>() {
            Ok(ts) => Some(ts.as_millisecond()),
            Err(e) => {
                eprintln!("error: --until {t:?} is not an RFC 3339 time or `now` ({e})");
                return ExitCode::from(2);
            }
        },
    };
    use forewarn::event::format_time;
    use forewarn::replay::{replay, ReplayOptions};
    let Some(VirtualSettings {
        schema,
        email,
        engine,
        rules_dir,
        addressless_channels,
        policy,
        unsubscribe_url,
        channels,
    }) = virtual_settings(config.as_deref())
    else {
        return ExitCode::from(2);
    };
    let opts = ReplayOptions {
        events,
        rules_dir: rules.unwrap_or(rules_dir),
        schema,
        email,
        engine,
        out_dir: out.clone(),
        from: forewarn::config::DEFAULT_FROM
            .parse()
            .expect("valid default sender"),
        senders: channels
            .iter()
            .flatten()
            .filter_map(|(name, ch)| Some((name.clone(), ch.kind.sender()?.clone())))
            .collect(),
        until,
        addressless_channels,
        policy,
        unsubscribe_url,
    };
    if let Some(new_rules) = compare {
        // The old rules only count; the new ones write their messages.
        let old = ReplayOptions {
            out_dir: None,
            ..opts.clone()
        };
        let new = ReplayOptions {
            rules_dir: new_rules.clone(),
            ..opts
        };
        let (old_report, new_report) = match (replay(&old).await, replay(&new).await) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "{} events; old rules: {}, new rules: {}\n",
            new_report.events,
            old.rules_dir.display(),
            new_rules.display()
        );
        print!(
            "{}",
            forewarn::replay::compare(&old_report, &new_report).table(10)
        );
        return ExitCode::SUCCESS;
    }
    let report = match replay(&opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if list {
        for d in &report.decisions {
            println!(
                "{}  {:<24} {:<16} {:<13} {}",
                format_time(d.fired_at),
                d.rule,
                d.customer,
                d.outcome,
                d.notification_id
            );
        }
        println!();
    }
    print!("{}", report.table());
    println!();
    let period = match (report.first_event, report.last_event) {
        (Some(a), Some(b)) => format!(" from {} to {}", format_time(a), format_time(b)),
        _ => String::new(),
    };
    println!(
        "events: {} replayed{period}; {} invalid; {} late",
        report.events,
        report.invalid.len(),
        report.late_events
    );
    for (line, reason) in report.invalid.iter().take(10) {
        println!("  line {line}: {reason}");
    }
    if report.invalid.len() > 10 {
        println!("  … and {} more invalid lines", report.invalid.len() - 10);
    }
    if report.still_open > 0 {
        println!(
            "{} absence episode{} still open: their deadlines fall after the end of the events (see --until)",
            report.still_open,
            if report.still_open == 1 { " is" } else { "s are" }
        );
    }
    for (rule, n) in &report.missing_key {
        println!(
            "rule {rule}: {n} trigger{} without a key or deadline field opened nothing",
            if *n == 1 { "" } else { "s" }
        );
    }
    for (rule, n) in &report.rule_errors {
        println!(
            "rule {rule}: {n} condition error{}",
            if *n == 1 { "" } else { "s" }
        );
    }
    match out {
        Some(dir) => println!(
            "would-be messages: {} written to {}/",
            report.written,
            dir.display()
        ),
        None => println!("would-be messages: not written (--no-write)"),
    }
    if let Some(path) = report_page {
        let facts = forewarn::replay::report::Facts {
            events_file: opts.events.clone(),
            rules_dir: opts.rules_dir.clone(),
            config: config.clone(),
        };
        let written = forewarn::replay::report::page(&report, &facts, channels.as_ref())
            .and_then(|html| write_page(&path, &html));
        match written {
            Ok(url) => println!("report: {url}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// `forewarn report`: exit code 2 for what the user can fix (see
/// `ReportError::exit_code`), 1 when a store, daemon or broker fails.
async fn report(
    rule: String,
    outcome_event: String,
    within: std::time::Duration,
    config: Option<PathBuf>,
    events: Option<PathBuf>,
    json: bool,
) -> ExitCode {
    use forewarn::event::EventSchema;
    use forewarn::report::{AdminApi, EventSource, ReportOptions};
    if within.is_zero() {
        eprintln!("error: --within must be longer than 0, e.g. 24h or 7d");
        return ExitCode::from(2);
    }
    let (state_dir, admin, schema, kafka) = match config {
        Some(path) => match load_config(&path) {
            Ok(c) => (
                c.state_dir,
                Some(AdminApi {
                    listen: c.admin_listen,
                    token: c.admin_token,
                }),
                c.events,
                Some(c.kafka),
            ),
            Err(code) => return code,
        },
        None => (
            PathBuf::from("./data"),
            None,
            EventSchema::conventional(),
            None,
        ),
    };
    let events = match (events, kafka) {
        (Some(file), _) => EventSource::File(file),
        (None, Some(kafka)) => EventSource::Kafka(kafka),
        (None, None) => {
            eprintln!("error: pass --events FILE.jsonl, or --config FILE to read the events from its Kafka topics");
            return ExitCode::from(2);
        }
    };
    let opts = ReportOptions {
        rule,
        outcome_event,
        within,
        state_dir,
        admin,
        schema,
        events,
    };
    let report = match forewarn::report::run(&opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: cannot write the report as JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.text());
    }
    ExitCode::SUCCESS
}

async fn produce(
    brokers: String,
    topic: String,
    file: PathBuf,
    key: String,
    rebase: Option<Vec<String>>,
) -> ExitCode {
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
        match forewarn::jsonl::open(&file) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
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
    let mut lines = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        match line {
            Ok(l) => lines.push(l),
            Err(e) => {
                eprintln!("error: reading line {}: {e}", n + 1);
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(fields) = rebase {
        match rebase_times(&mut lines, &fields) {
            Ok(shift) => println!(
                "shifted time fields {fields:?} by {}",
                humantime::format_duration(std::time::Duration::from_secs(
                    (shift / 1000).unsigned_abs()
                ))
            ),
            Err(e) => {
                eprintln!("error: --rebase-time: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut sent = 0usize;
    for (n, line) in lines.into_iter().enumerate() {
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
