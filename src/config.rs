//! Daemon configuration: one TOML file plus `FOREWARN__SECTION__KEY`
//! environment overrides, read through the `config` crate.
//!
//! Raw structs mirror the file with `deny_unknown_fields`; `Config::from_raw`
//! converts them once into typed values and reports *every* problem at once,
//! each naming the key and saying how to fix it. Past this module no code
//! re-checks a string from the config.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::event::{EventSchema, FieldPath};

/// Every problem found in a config file, one per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} problem{} in the configuration:",
            self.source_name,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// A secret value (password, token). Its `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// librdkafka properties (`kafka.properties`, a Kafka channel's
/// `properties`). Its `Debug` shows every key but redacts the values of
/// secret ones (passwords, private keys, OAuth and JAAS settings).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(BTreeMap<String, String>);

impl KafkaProperties {
    pub fn new(map: BTreeMap<String, String>) -> Self {
        KafkaProperties(map)
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
    /// Whether a property's value is a secret (never printed).
    pub fn is_secret(key: &str) -> bool {
        key.contains("password")
            || key.contains("secret")
            || key.ends_with("key.pem")
            || key.ends_with(".jaas.config")
            || key == "sasl.oauthbearer.config"
    }
}

impl<'a> IntoIterator for &'a KafkaProperties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Value<'a>(&'a str, bool);
        impl fmt::Debug for Value<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if self.1 {
                    f.write_str("[redacted]")
                } else {
                    write!(f, "{:?}", self.0)
                }
            }
        }
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, Value(v, KafkaProperties::is_secret(k)))),
            )
            .finish()
    }
}

// ---------------------------------------------------------------- raw shape

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    kafka: RawKafka,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    customers: RawCustomers,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    rules: RawRules,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    logging: RawLogging,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    channels: BTreeMap<String, RawChannel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    max_per_customer: Option<RawCap>,
    quiet_hours: Option<RawQuietHours>,
    timezone_field: Option<String>,
    default_timezone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCap {
    count: u32,
    per: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuietHours {
    start: String,
    end: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: String,
    #[serde(default = "default_group_id")]
    group_id: String,
    topics: Vec<String>,
    dead_letter_topic: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    /// librdkafka property → the environment variable holding its value
    /// (secrets such as `sasl.password` stay out of the file).
    #[serde(default)]
    properties_env: BTreeMap<String, String>,
}

fn default_group_id() -> String {
    "forewarn".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    #[serde(rename = "type", default = "d_type")]
    kind: String,
    #[serde(default = "d_customer")]
    customer: String,
    #[serde(default = "d_time")]
    time: String,
    id: Option<String>,
    #[serde(default = "d_lateness")]
    allowed_lateness: String,
    #[serde(default = "d_idle")]
    idle_timeout: String,
}

fn d_type() -> String {
    "type".into()
}
fn d_customer() -> String {
    "customer_id".into()
}
fn d_time() -> String {
    "ts".into()
}
fn d_lateness() -> String {
    "5s".into()
}
fn d_idle() -> String {
    "5s".into()
}

impl Default for RawEvents {
    fn default() -> Self {
        RawEvents {
            kind: d_type(),
            customer: d_customer(),
            time: d_time(),
            id: None,
            allowed_lateness: d_lateness(),
            idle_timeout: d_idle(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustomers {
    #[serde(default = "d_email")]
    email: String,
    profiles_topic: Option<String>,
    #[serde(default = "d_consent")]
    consent: String,
    unsubscribe_url: Option<String>,
}

fn d_consent() -> String {
    "customer.consent".into()
}

fn d_email() -> String {
    "customer.email".into()
}

impl Default for RawCustomers {
    fn default() -> Self {
        RawCustomers {
            email: d_email(),
            profiles_topic: None,
            consent: d_consent(),
            unsubscribe_url: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default = "d_state_dir")]
    dir: PathBuf,
    #[serde(default = "d_retention")]
    ledger_retention: String,
    #[serde(default = "d_dead_retention")]
    dead_letter_retention: String,
    #[serde(default = "d_retention")]
    decision_log_retention: String,
    #[serde(default = "d_commit_interval")]
    commit_interval: String,
    #[serde(default = "d_commit_max_events")]
    commit_max_events: usize,
    #[serde(default = "d_compact_every")]
    compact_every: String,
    #[serde(default = "d_snapshot_min_bytes")]
    snapshot_min_bytes: u64,
}
fn d_snapshot_min_bytes() -> u64 {
    crate::state::engine::SNAPSHOT_MIN_BYTES
}
fn d_retention() -> String {
    "90d".into()
}
fn d_dead_retention() -> String {
    "30d".into()
}
fn d_commit_interval() -> String {
    "100ms".into()
}
fn d_commit_max_events() -> usize {
    5_000
}
fn d_compact_every() -> String {
    "10m".into()
}
fn d_state_dir() -> PathBuf {
    "./data".into()
}
impl Default for RawState {
    fn default() -> Self {
        RawState {
            dir: d_state_dir(),
            ledger_retention: d_retention(),
            dead_letter_retention: d_dead_retention(),
            decision_log_retention: d_retention(),
            commit_interval: d_commit_interval(),
            commit_max_events: d_commit_max_events(),
            compact_every: d_compact_every(),
            snapshot_min_bytes: d_snapshot_min_bytes(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default = "d_rules_dir")]
    dir: PathBuf,
}
fn d_rules_dir() -> PathBuf {
    "./rules".into()
}
impl Default for RawRules {
    fn default() -> Self {
        RawRules { dir: d_rules_dir() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "d_listen")]
    listen: String,
    /// The bearer token for `/api/…` (customer data), from the environment…
    token_env: Option<String>,
    /// …or from a file.
    token_file: Option<PathBuf>,
}
fn d_listen() -> String {
    "127.0.0.1:9464".into()
}
impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: d_listen(),
            token_env: None,
            token_file: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    #[serde(default)]
    log_customer_ids: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    #[serde(rename = "type")]
    kind: String,
    // smtp
    host: Option<String>,
    port: Option<u16>,
    tls: Option<String>,
    from: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    // smtp, webhook
    timeout: Option<String>,
    // file
    dir: Option<PathBuf>,
    // webhook
    url: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    format: Option<String>,
    // kafka
    topic: Option<String>,
    brokers: Option<String>,
    properties: Option<BTreeMap<String, String>>,
    // the dispatcher, every channel
    max_attempts: Option<u32>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    max_age: Option<String>,
    concurrency: Option<usize>,
    rate_limit: Option<String>,
}

impl RawChannel {
    /// The type-specific keys that are set, for "does not apply" checks.
    fn set_keys(&self) -> Vec<&'static str> {
        [
            ("host", self.host.is_some()),
            ("port", self.port.is_some()),
            ("tls", self.tls.is_some()),
            ("from", self.from.is_some()),
            ("username", self.username.is_some()),
            ("password_env", self.password_env.is_some()),
            ("password_file", self.password_file.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("timeout", self.timeout.is_some()),
            ("dir", self.dir.is_some()),
            ("url", self.url.is_some()),
            ("secret_env", self.secret_env.is_some()),
            ("secret_file", self.secret_file.is_some()),
            ("format", self.format.is_some()),
            ("topic", self.topic.is_some()),
            ("brokers", self.brokers.is_some()),
            ("properties", self.properties.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

// ---------------------------------------------------------------- typed shape

#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub events: EventSchema,
    pub allowed_lateness: Duration,
    pub idle_timeout: Duration,
    pub customers: CustomersConfig,
    pub state_dir: PathBuf,
    /// How long once_per remembers a notification (and the outbox a
    /// settled id).
    pub ledger_retention: Duration,
    /// How long a dead letter is kept before compaction deletes it.
    pub dead_letter_retention: Duration,
    /// How long the decision log keeps a decision.
    pub decision_log_retention: Duration,
    /// Durable progress is committed at least this often while events
    /// flow (the most a decision waits before it can be sent)…
    pub commit_interval: Duration,
    /// …or after this many events, whichever comes first.
    pub commit_max_events: usize,
    /// How often retention is enforced in the background.
    pub compact_every: Duration,
    /// A partition's state log is replaced by a snapshot once it is larger
    /// than this and than the last snapshot.
    pub snapshot_min_bytes: u64,
    pub rules_dir: PathBuf,
    pub admin_listen: SocketAddr,
    /// Bearer token guarding `/api/…`; without one those routes answer 403.
    pub admin_token: Option<Secret>,
    pub log_customer_ids: bool,
    pub policy: crate::policy::PolicyConfig,
    pub channels: BTreeMap<String, ChannelConfig>,
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    pub dead_letter_topic: Option<String>,
    /// Passed to librdkafka as-is (security.protocol, sasl.*, ssl.*),
    /// with `properties_env` resolved into it.
    pub properties: KafkaProperties,
}

#[derive(Debug, Clone)]
pub struct CustomersConfig {
    pub email: FieldPath,
    pub profiles_topic: Option<String>,
    /// Marketing emails carry `List-Unsubscribe` with this URL, rendered
    /// as a template over `customer`, `rule` and `notification`.
    pub unsubscribe_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    pub retry: RetryPolicy,
    /// Sends in flight at once on this channel.
    pub concurrency: usize,
    /// At most this many sends per second (token bucket), if set.
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone)]
pub enum ChannelKind {
    Smtp(SmtpConfig),
    File(FileConfig),
    Webhook(WebhookConfig),
    Kafka(KafkaChannelConfig),
}

impl ChannelKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ChannelKind::Smtp(_) => "smtp",
            ChannelKind::File(_) => "file",
            ChannelKind::Webhook(_) => "webhook",
            ChannelKind::Kafka(_) => "kafka",
        }
    }

    /// Email channels need a recipient address; the others carry the
    /// notification to a system that knows the customer by id.
    pub fn needs_address(&self) -> bool {
        matches!(self, ChannelKind::Smtp(_) | ChannelKind::File(_))
    }

    /// An email channel's `From`.
    pub fn sender(&self) -> Option<&lettre::message::Mailbox> {
        match self {
            ChannelKind::Smtp(c) => Some(&c.from),
            ChannelKind::File(c) => Some(&c.from),
            ChannelKind::Webhook(_) | ChannelKind::Kafka(_) => None,
        }
    }

    /// Keys of `[channels.NAME]` this type understands, besides `type` and
    /// the dispatcher's keys.
    fn keys(type_name: &str) -> &'static [&'static str] {
        match type_name {
            "smtp" => &[
                "host",
                "port",
                "tls",
                "from",
                "username",
                "password_env",
                "password_file",
                "ca_file",
                "timeout",
            ],
            "file" => &["dir", "from"],
            "webhook" => &["url", "secret_env", "secret_file", "format", "timeout"],
            "kafka" => &["topic", "brokers", "properties", "timeout"],
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    StartTls,
    Implicit,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub from: lettre::message::Mailbox,
    pub credentials: Option<(String, Secret)>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct FileConfig {
    pub dir: PathBuf,
    pub from: lettre::message::Mailbox,
}

/// The body a webhook carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The notification as JSON, in a Standard Webhooks envelope.
    Standard,
    /// `{"text": …}`, which Slack incoming webhooks (and Mattermost, Rocket.Chat) accept.
    Slack,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    /// The Standard Webhooks signing key (the bytes after `whsec_`, decoded).
    pub secret: Option<Secret>,
    pub format: WebhookFormat,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct KafkaChannelConfig {
    pub topic: String,
    pub brokers: String,
    /// Handed to librdkafka as-is, over `[kafka.properties]`.
    pub properties: KafkaProperties,
    pub timeout: Duration,
}

/// At most `count` sends per `per` (a token bucket: `count` may go at once
/// after a quiet spell).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

/// How the dispatcher retries a channel's transient failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// A notification older than this is dead-lettered instead of retried.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_age: Duration::from_secs(3600),
        }
    }
}

pub const DEFAULT_FROM: &str = "forewarn <forewarn@localhost>";

impl Config {
    /// The engine settings this config gives. `live`: the daemon's
    /// (durable state, the send-time guard); otherwise replay's and
    /// `forewarn test`'s, in virtual time.
    pub fn engine(&self, live: bool) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            allowed_lateness: self.allowed_lateness.as_millis() as i64,
            ledger_retention: self.ledger_retention.as_millis() as i64,
            send_time_guard: live,
            durable: live,
        }
    }

    /// The channels that carry notifications without an email address
    /// (webhook, kafka): their rules never yield `no_address`.
    pub fn addressless_channels(&self) -> std::collections::BTreeSet<String> {
        self.channels
            .iter()
            .filter(|(_, ch)| !ch.kind.needs_address())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Reads `path` and applies `FOREWARN__SECTION__KEY` overrides from the
    /// process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, env)
    }

    /// Same as [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let fail = |msg: String| ConfigError {
            source_name: name.clone(),
            problems: vec![msg],
        };
        if !path.exists() {
            return Err(fail(
                "the file does not exist; pass the path of a forewarn config (see deploy/local/forewarn.toml for an example) with --config".into(),
            ));
        }
        let env_map: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("FOREWARN__"))
            .collect();
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("FOREWARN")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("kafka.topics")
                    .source(Some(env_map)),
            )
            .build()
            .map_err(|e| fail(describe_config_error(&e)))?;
        let raw: RawConfig = built
            .try_deserialize()
            .map_err(|e| fail(describe_config_error(&e)))?;
        Config::from_raw(raw).map_err(|problems| ConfigError {
            source_name: name,
            problems,
        })
    }

    fn from_raw(mut raw: RawConfig) -> Result<Config, Vec<String>> {
        let mut p = Vec::new();

        if raw.kafka.brokers.trim().is_empty() {
            p.push(
                "kafka.brokers is empty: set it to host:port[,host:port], e.g. \"127.0.0.1:9092\""
                    .into(),
            );
        }
        if raw.kafka.group_id.trim().is_empty() {
            p.push("kafka.group_id is empty: name the consumer group, e.g. \"forewarn\"".into());
        }
        let topics: Vec<String> = raw
            .kafka
            .topics
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if topics.is_empty() {
            p.push("kafka.topics is empty: list the topics that carry behavioral events, e.g. [\"behavior-events\"]".into());
        }
        if let Some(dlt) = &raw.kafka.dead_letter_topic {
            if topics.iter().any(|t| t == dlt) {
                p.push(format!("kafka.dead_letter_topic = {dlt:?} is also in kafka.topics: invalid events would be read again; use a separate topic"));
            }
        }
        for key in raw.kafka.properties.keys() {
            if matches!(
                key.as_str(),
                "group.id"
                    | "bootstrap.servers"
                    | "enable.auto.commit"
                    | "enable.auto.offset.store"
            ) {
                p.push(format!("kafka.properties.\"{key}\" is managed by forewarn: use kafka.brokers / kafka.group_id instead, or remove it"));
            }
        }
        for (prop, var) in std::mem::take(&mut raw.kafka.properties_env) {
            if raw.kafka.properties.contains_key(&prop) {
                p.push(format!("kafka.properties.\"{prop}\" and kafka.properties_env.\"{prop}\" are both set: keep one (properties_env keeps the secret out of the file)"));
                continue;
            }
            let key = format!("kafka.properties_env.\"{prop}\"");
            if let Some(v) = secret(
                &mut p,
                &|_| key.clone(),
                ("", &Some(var)),
                ("", &None),
                "property value",
            ) {
                raw.kafka.properties.insert(prop, v.expose().to_string());
            }
        }
        kafka_security(&mut p, "kafka.properties", &raw.kafka.properties);

        let mut path = |key: &str, v: &str| match FieldPath::parse(v) {
            Ok(fp) => Some(fp),
            Err(e) => {
                p.push(format!("{key} = {v:?}: {e}"));
                None
            }
        };
        let kind = path("events.type", &raw.events.kind);
        let customer = path("events.customer", &raw.events.customer);
        let time = path("events.time", &raw.events.time);
        let id = raw.events.id.as_deref().map(|v| path("events.id", v));
        let email = path("customers.email", &raw.customers.email);
        let consent_field = path("customers.consent", &raw.customers.consent);

        let allowed_lateness = duration(
            &mut p,
            "events.allowed_lateness",
            &raw.events.allowed_lateness,
        );
        let idle_timeout = duration(&mut p, "events.idle_timeout", &raw.events.idle_timeout);
        let ledger_retention = duration(
            &mut p,
            "state.ledger_retention",
            &raw.state.ledger_retention,
        );
        let dead_letter_retention = duration(
            &mut p,
            "state.dead_letter_retention",
            &raw.state.dead_letter_retention,
        );
        let decision_log_retention = duration(
            &mut p,
            "state.decision_log_retention",
            &raw.state.decision_log_retention,
        );
        let commit_interval = duration(&mut p, "state.commit_interval", &raw.state.commit_interval);
        let compact_every = duration(&mut p, "state.compact_every", &raw.state.compact_every);
        if raw.state.commit_max_events == 0 {
            p.push("state.commit_max_events = 0: use at least 1 (5000 is the default)".into());
        }
        if compact_every.is_some_and(|d| d.is_zero()) {
            p.push("state.compact_every = 0: use a positive duration, e.g. \"10m\"".into());
        }

        let admin_listen = match raw.admin.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                p.push(format!(
                    "admin.listen = {:?} is not an address: use ip:port, e.g. \"127.0.0.1:9464\"",
                    raw.admin.listen
                ));
                None
            }
        };

        let policy = policy(&mut p, &raw.policy, consent_field);
        if let Some(t) = &raw.customers.unsubscribe_url {
            if let Err(e) = minijinja::Environment::new().template_from_str(t) {
                p.push(format!("customers.unsubscribe_url = {t:?} is not a valid template ({e}): write a URL, optionally with {{{{ customer.id }}}} or {{{{ notification.id }}}}"));
            }
        }
        let admin_token = secret(
            &mut p,
            &|k| format!("admin.{k}"),
            ("token_env", &raw.admin.token_env),
            ("token_file", &raw.admin.token_file),
            "admin API token",
        );

        let mut channels = BTreeMap::new();
        if raw.channels.is_empty() {
            p.push("no [channels.NAME] section: define at least one channel, e.g. [channels.outbox] type = \"file\", dir = \"./outbox\"".into());
        }
        for (name, ch) in raw.channels {
            if let Some(c) = channel(&mut p, &name, ch, &raw.kafka) {
                channels.insert(name, c);
            }
        }

        if !p.is_empty() {
            return Err(p);
        }
        // All Options are Some here: every None pushed a problem above.
        let (Some(kind), Some(customer), Some(time), Some(email), Some(admin_listen)) =
            (kind, customer, time, email, admin_listen)
        else {
            unreachable!("a missing value always records a problem")
        };
        Ok(Config {
            kafka: KafkaConfig {
                brokers: raw.kafka.brokers,
                group_id: raw.kafka.group_id,
                topics,
                dead_letter_topic: raw.kafka.dead_letter_topic,
                properties: KafkaProperties::new(raw.kafka.properties),
            },
            events: EventSchema {
                kind,
                customer,
                time,
                id: id.flatten(),
            },
            allowed_lateness: allowed_lateness.unwrap_or_default(),
            idle_timeout: idle_timeout.unwrap_or_default(),
            customers: CustomersConfig {
                email,
                profiles_topic: raw.customers.profiles_topic,
                unsubscribe_url: raw.customers.unsubscribe_url,
            },
            state_dir: raw.state.dir,
            ledger_retention: ledger_retention.unwrap_or_default(),
            dead_letter_retention: dead_letter_retention.unwrap_or_default(),
            decision_log_retention: decision_log_retention.unwrap_or_default(),
            commit_interval: commit_interval.unwrap_or_default(),
            commit_max_events: raw.state.commit_max_events,
            compact_every: compact_every.unwrap_or_default(),
            snapshot_min_bytes: raw.state.snapshot_min_bytes,
            rules_dir: raw.rules.dir,
            admin_listen,
            admin_token,
            log_customer_ids: raw.logging.log_customer_ids,
            policy: policy.unwrap_or_default(),
            channels,
        })
    }
}

/// The `[policy]` section (SPEC 4).
fn policy(
    p: &mut Vec<String>,
    raw: &RawPolicy,
    consent_field: Option<FieldPath>,
) -> Option<crate::policy::PolicyConfig> {
    use crate::policy::{parse_clock, Cap, PolicyConfig, QuietHours};
    let before = p.len();
    let mut cfg = PolicyConfig::default();
    if let Some(c) = consent_field {
        cfg.consent_field = c;
    }
    if let Some(cap) = &raw.max_per_customer {
        if cap.count == 0 {
            p.push("policy.max_per_customer.count = 0: use at least 1, or remove max_per_customer to send marketing messages without a cap".into());
        }
        if let Some(per) = duration(p, "policy.max_per_customer.per", &cap.per) {
            if per.is_zero() {
                p.push(
                    "policy.max_per_customer.per = 0: use a period such as \"24h\" or \"7d\""
                        .into(),
                );
            }
            cfg.max_per_customer = Some(Cap {
                count: cap.count,
                per: per.as_millis() as i64,
            });
        }
    }
    if let Some(q) = &raw.quiet_hours {
        let start =
            parse_clock(&q.start).map_err(|e| p.push(format!("policy.quiet_hours.start: {e}")));
        let end = parse_clock(&q.end).map_err(|e| p.push(format!("policy.quiet_hours.end: {e}")));
        if let (Ok(start), Ok(end)) = (start, end) {
            if start == end {
                p.push(format!("policy.quiet_hours: start and end are both {:?}, an empty window: remove quiet_hours, or give a window such as start = \"21:00\", end = \"08:00\"", q.start));
            }
            cfg.quiet_hours = Some(QuietHours { start, end });
        }
    }
    if let Some(f) = &raw.timezone_field {
        match FieldPath::parse(f) {
            Ok(fp) => cfg.timezone_field = fp,
            Err(e) => p.push(format!("policy.timezone_field = {f:?}: {e}")),
        }
    }
    if let Some(tz) = &raw.default_timezone {
        match jiff::tz::TimeZone::get(tz.trim()) {
            Ok(z) => cfg.default_timezone = z,
            Err(_) => p.push(format!("policy.default_timezone = {tz:?} is not a known time zone: use an IANA name such as \"UTC\", \"Europe/Paris\" or \"America/New_York\"")),
        }
    }
    (p.len() == before).then_some(cfg)
}

fn duration(p: &mut Vec<String>, key: &str, v: &str) -> Option<Duration> {
    match humantime::parse_duration(v.trim()) {
        Ok(d) => Some(d),
        Err(e) => {
            p.push(format!(
                "{key} = {v:?} is not a duration ({e}): write a number with a unit, e.g. \"500ms\", \"5s\", \"30m\", \"2h\", \"7d\""
            ));
            None
        }
    }
}

fn mailbox(p: &mut Vec<String>, key: &str, v: &str) -> Option<lettre::message::Mailbox> {
    match v.parse() {
        Ok(m) => Some(m),
        Err(e) => {
            p.push(format!(
                "{key} = {v:?} is not a mail address ({e}): write \"Name <addr@example.com>\" or \"addr@example.com\""
            ));
            None
        }
    }
}

/// Reads a secret from an environment variable or a file (never from the
/// config text itself), pushing a problem when it is unusable.
/// Catches a half-configured Kafka security setup at start-up and in
/// `forewarn check --config`, where librdkafka would only log "SSL handshake
/// failed" or retry authentication forever. `key` names the table, e.g.
/// `kafka.properties`.
fn kafka_security(p: &mut Vec<String>, key: &str, props: &BTreeMap<String, String>) {
    let get = |k: &str| props.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let protocol = get("security.protocol").unwrap_or("plaintext");
    let lower = protocol.to_ascii_lowercase();
    if !matches!(
        lower.as_str(),
        "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
    ) {
        p.push(format!("{key}.\"security.protocol\" = {protocol:?} is not a protocol librdkafka knows: use \"SASL_SSL\" (SASL over TLS), \"SSL\" (TLS, optionally with a client certificate), \"SASL_PLAINTEXT\" or \"PLAINTEXT\""));
        return;
    }
    let tls = lower.ends_with("ssl");
    let sasl = lower.starts_with("sasl");
    let shown = match get("security.protocol") {
        Some(v) => format!("{v:?}"),
        None => "not set (PLAINTEXT)".to_string(),
    };
    let first = |prefix: &str| props.keys().find(|k| k.starts_with(prefix));
    if !tls {
        if let Some(k) = first("ssl.") {
            p.push(format!("{key}.\"{k}\" is set but security.protocol is {shown}, so TLS is off and it would be ignored: set {key}.\"security.protocol\" = \"SSL\" (or \"SASL_SSL\" with SASL)"));
        }
    }
    if !sasl {
        if let Some(k) = first("sasl.") {
            p.push(format!("{key}.\"{k}\" is set but security.protocol is {shown}, so SASL is off and it would be ignored: set {key}.\"security.protocol\" = \"SASL_SSL\""));
        }
    }
    if sasl {
        match get("sasl.mechanisms").or_else(|| get("sasl.mechanism")) {
            None => p.push(format!("{key}.\"security.protocol\" = {protocol:?} but sasl.mechanisms is not set (librdkafka would try Kerberos): set {key}.\"sasl.mechanisms\" = \"SCRAM-SHA-512\", \"SCRAM-SHA-256\", \"PLAIN\", \"OAUTHBEARER\" or \"GSSAPI\"")),
            Some(m) => match m.to_ascii_uppercase().as_str() {
                "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" => {
                    for (prop, hint) in [
                        ("sasl.username", "the user forewarn logs in as"),
                        ("sasl.password", "its password; better from the environment: kafka.properties_env.\"sasl.password\" = \"KAFKA_SASL_PASSWORD\""),
                    ] {
                        if get(prop).is_none() {
                            p.push(format!("{key}.\"sasl.mechanisms\" = {m:?} needs {prop}, which is not set: set {key}.\"{prop}\" to {hint}"));
                        }
                    }
                }
                "GSSAPI" | "OAUTHBEARER" => {}
                _ => p.push(format!("{key}.\"sasl.mechanisms\" = {m:?} is not a SASL mechanism librdkafka knows: use \"SCRAM-SHA-512\", \"SCRAM-SHA-256\", \"PLAIN\", \"OAUTHBEARER\" or \"GSSAPI\"")),
            },
        }
    }
    if !tls {
        return;
    }
    // A client certificate is a pair: one half alone fails the handshake.
    for (cert, pkey) in [
        ("ssl.certificate.location", "ssl.key.location"),
        ("ssl.certificate.pem", "ssl.key.pem"),
    ] {
        match (get(cert), get(pkey)) {
            (Some(_), None) => p.push(format!("{key}.\"{cert}\" is set without {pkey}: a client certificate (mutual TLS) needs its private key too; set {key}.\"{pkey}\", or remove {cert}")),
            (None, Some(_)) => p.push(format!("{key}.\"{pkey}\" is set without {cert}: a private key (mutual TLS) needs its certificate too; set {key}.\"{cert}\", or remove {pkey}")),
            _ => {}
        }
    }
    if get("ssl.keystore.location").is_some() && get("ssl.keystore.password").is_none() {
        p.push(format!("{key}.\"ssl.keystore.location\" is set without ssl.keystore.password: set it (kafka.properties_env.\"ssl.keystore.password\" keeps it out of the file)"));
    }
    // Files librdkafka would fail to read only when it first connects.
    for (prop, what, marker) in [
        (
            "ssl.ca.location",
            "CA certificate",
            Some("-----BEGIN CERTIFICATE-----"),
        ),
        (
            "ssl.certificate.location",
            "client certificate",
            Some("-----BEGIN CERTIFICATE-----"),
        ),
        ("ssl.key.location", "private key", Some("PRIVATE KEY-----")),
        ("ssl.keystore.location", "PKCS#12 keystore", None),
        ("ssl.crl.location", "certificate revocation list", None),
    ] {
        let Some(path) = get(prop) else { continue };
        if prop == "ssl.ca.location" && path == "probe" {
            continue;
        }
        let path = Path::new(path);
        match std::fs::metadata(path) {
            Err(e) => p.push(format!(
                "{key}.\"{prop}\" = {:?} cannot be read ({e}): point it at the {what} file (PEM)",
                path.display()
            )),
            // A CA directory (hashed certificates) is allowed.
            Ok(m) if m.is_dir() => {
                if prop != "ssl.ca.location" {
                    p.push(format!(
                        "{key}.\"{prop}\" = {:?} is a directory: point it at the {what} file",
                        path.display()
                    ));
                }
            }
            Ok(_) => {
                let Some(marker) = marker else { continue };
                match std::fs::read(path) {
                    Ok(bytes) if String::from_utf8_lossy(&bytes).contains(marker) => {}
                    Ok(_) => p.push(format!("{key}.\"{prop}\" = {:?} holds no PEM {what} (no \"{marker}\" line): convert it, e.g. openssl x509 -in cert.der -inform der -out cert.pem (or openssl pkcs12 for a .p12 bundle)", path.display())),
                    Err(e) => p.push(format!("{key}.\"{prop}\" = {:?} cannot be read ({e}): make it readable by the user forewarn runs as", path.display())),
                }
            }
        }
    }
}

fn secret(
    p: &mut Vec<String>,
    key: &dyn Fn(&str) -> String,
    (env_key, env): (&str, &Option<String>),
    (file_key, file): (&str, &Option<PathBuf>),
    what: &str,
) -> Option<Secret> {
    match (env, file) {
        (Some(_), Some(_)) => {
            p.push(format!(
                "{} and {}: set at most one of them",
                key(env_key),
                key(file_key)
            ));
            None
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                p.push(format!("{} = {var:?}, but that environment variable is not set or empty: export it before starting forewarn", key(env_key)));
                None
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) => Some(Secret::new(v.trim_end_matches(['\r', '\n']))),
            Err(e) => {
                p.push(format!("{} = {:?} cannot be read ({e}): point it at a readable file holding only the {what}", key(file_key), path.display()));
                None
            }
        },
        (None, None) => None,
    }
}

/// `"20/s"`, `"100/min"`, `"5000/h"`.
fn rate_limit(p: &mut Vec<String>, key: &str, v: &str) -> Option<RateLimit> {
    let parsed = v.split_once('/').and_then(|(n, unit)| {
        let count: u32 = n.trim().parse().ok().filter(|&c| c > 0)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(RateLimit { count, per })
    });
    if parsed.is_none() {
        p.push(format!(
            "{key} = {v:?} is not a rate: write COUNT/UNIT with a count above 0 and a unit of s, min or h, e.g. \"20/s\""
        ));
    }
    parsed
}

fn channel(
    p: &mut Vec<String>,
    name: &str,
    ch: RawChannel,
    kafka: &RawKafka,
) -> Option<ChannelConfig> {
    let key = |k: &str| format!("channels.{name}.{k}");
    let before = p.len();
    let kind_name = ch.kind.as_str();
    let known = ["smtp", "file", "webhook", "kafka"];
    if !known.contains(&kind_name) {
        p.push(format!(
            "{} = {kind_name:?} is not a channel type: use \"smtp\", \"webhook\", \"kafka\" or \"file\"",
            key("type")
        ));
        return None;
    }
    let allowed = ChannelKind::keys(kind_name);
    for field in ch.set_keys() {
        if !allowed.contains(&field) {
            p.push(format!(
                "{} does not apply to a {kind_name} channel: remove it (it takes {})",
                key(field),
                allowed.join(", ")
            ));
        }
    }

    let mut retry = RetryPolicy::default();
    if let Some(n) = ch.max_attempts {
        if n == 0 {
            p.push(format!(
                "{} = 0: use at least 1 (1 means no retry)",
                key("max_attempts")
            ));
        }
        retry.max_attempts = n;
    }
    if let Some(v) = &ch.retry_initial {
        retry.initial = duration(p, &key("retry_initial"), v).unwrap_or(retry.initial);
    }
    if let Some(v) = &ch.retry_max {
        retry.max = duration(p, &key("retry_max"), v).unwrap_or(retry.max);
    }
    if let Some(v) = &ch.max_age {
        retry.max_age = duration(p, &key("max_age"), v).unwrap_or(retry.max_age);
    }
    let concurrency = match ch.concurrency {
        Some(0) => {
            p.push(format!(
                "{} = 0: use at least 1 (sends in flight at once)",
                key("concurrency")
            ));
            1
        }
        Some(n) => n,
        None => match kind_name {
            "file" => 1,
            "smtp" => 4,
            _ => 8,
        },
    };
    let rate_limit = ch
        .rate_limit
        .as_deref()
        .and_then(|v| rate_limit(p, &key("rate_limit"), v));
    let timeout = match &ch.timeout {
        Some(v) => duration(p, &key("timeout"), v),
        None => Some(Duration::from_secs(10)),
    };

    let kind = match kind_name {
        "smtp" => {
            let from = mailbox(p, &key("from"), ch.from.as_deref().unwrap_or(DEFAULT_FROM));
            let host = ch.host.clone().unwrap_or_default();
            if host.trim().is_empty() {
                p.push(format!(
                    "{} is missing: name the SMTP server, e.g. host = \"smtp.example.com\"",
                    key("host")
                ));
            }
            let tls = match ch.tls.as_deref().unwrap_or("starttls") {
                "none" => TlsMode::None,
                "starttls" => TlsMode::StartTls,
                "implicit" => TlsMode::Implicit,
                other => {
                    p.push(format!(
                        "{} = {other:?}: use \"none\", \"starttls\" or \"implicit\"",
                        key("tls")
                    ));
                    TlsMode::StartTls
                }
            };
            let port = ch.port.unwrap_or(match tls {
                TlsMode::Implicit => 465,
                TlsMode::StartTls => 587,
                TlsMode::None => 25,
            });
            let password = secret(
                p,
                &key,
                ("password_env", &ch.password_env),
                ("password_file", &ch.password_file),
                "password",
            );
            let credentials = match (&ch.username, password) {
                (Some(u), Some(pw)) => Some((u.clone(), pw)),
                (Some(_), None) if ch.password_env.is_none() && ch.password_file.is_none() => {
                    p.push(format!(
                        "{} is set without a password: add password_env or password_file",
                        key("username")
                    ));
                    None
                }
                (None, Some(_)) => {
                    p.push(format!(
                        "a password is configured without {}: add the user name",
                        key("username")
                    ));
                    None
                }
                _ => None,
            };
            if credentials.is_some() && tls == TlsMode::None {
                p.push(format!("{} = \"none\" with a username: forewarn will not send credentials in clear text; use tls = \"starttls\" or \"implicit\"", key("tls")));
            }
            from.zip(timeout).map(|(from, timeout)| {
                ChannelKind::Smtp(SmtpConfig {
                    host,
                    port,
                    tls,
                    from,
                    credentials,
                    ca_file: ch.ca_file.clone(),
                    timeout,
                })
            })
        }
        "file" => {
            let from = mailbox(p, &key("from"), ch.from.as_deref().unwrap_or(DEFAULT_FROM));
            let dir = ch.dir.clone().unwrap_or_else(|| "./outbox".into());
            from.map(|from| ChannelKind::File(FileConfig { dir, from }))
        }
        "webhook" => {
            let url = ch.url.clone().unwrap_or_default();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(format!(
                    "{} = {url:?}: give the http:// or https:// address to POST to",
                    key("url")
                ));
            }
            let format = match ch.format.as_deref().unwrap_or("standard") {
                "standard" => WebhookFormat::Standard,
                "slack" => WebhookFormat::Slack,
                other => {
                    p.push(format!(
                        "{} = {other:?}: use \"standard\" (the notification as JSON) or \"slack\" (a {{\"text\": …}} message)",
                        key("format")
                    ));
                    WebhookFormat::Standard
                }
            };
            let secret = secret(
                p,
                &key,
                ("secret_env", &ch.secret_env),
                ("secret_file", &ch.secret_file),
                "signing secret",
            )
            .and_then(|s| match webhook_key(s.expose()) {
                Ok(k) => Some(Secret(k)),
                Err(why) => {
                    let from = if ch.secret_env.is_some() {
                        "secret_env"
                    } else {
                        "secret_file"
                    };
                    p.push(format!("{}: the signing secret {why}", key(from)));
                    None
                }
            });
            timeout.map(|timeout| {
                ChannelKind::Webhook(WebhookConfig {
                    url,
                    secret,
                    format,
                    timeout,
                })
            })
        }
        _ => {
            let topic = ch.topic.clone().unwrap_or_default();
            if topic.trim().is_empty() {
                p.push(format!(
                    "{} is missing: name the output topic, e.g. topic = \"forewarn-notifications\"",
                    key("topic")
                ));
            }
            let mut properties = kafka.properties.clone();
            for (k, v) in ch.properties.clone().unwrap_or_default() {
                if matches!(
                    k.as_str(),
                    "bootstrap.servers" | "enable.idempotence" | "acks"
                ) {
                    p.push(format!("{}.\"{k}\" is managed by forewarn (idempotent producer): use {} for the brokers, or remove it", key("properties"), key("brokers")));
                }
                properties.insert(k, v);
            }
            if ch.properties.is_some() {
                kafka_security(p, &key("properties"), &properties);
            }
            let properties = KafkaProperties::new(properties);
            timeout.map(|timeout| {
                ChannelKind::Kafka(KafkaChannelConfig {
                    topic,
                    brokers: ch.brokers.clone().unwrap_or_else(|| kafka.brokers.clone()),
                    properties,
                    timeout,
                })
            })
        }
    };
    if p.len() > before {
        return None;
    }
    kind.map(|kind| ChannelConfig {
        name: name.to_string(),
        kind,
        retry,
        concurrency,
        rate_limit,
    })
}

/// Standard Webhooks secrets are `whsec_` + base64 of the key bytes.
fn webhook_key(s: &str) -> Result<String, String> {
    use base64::Engine as _;
    let b64 = s.trim().strip_prefix("whsec_").ok_or(
        "must start with whsec_ (Standard Webhooks format); make one with: echo \"whsec_$(openssl rand -base64 32)\"",
    )?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("is not whsec_ followed by base64 ({e})"))?;
    if bytes.len() < 24 {
        return Err(format!(
            "is only {} bytes long: use at least 24 random bytes, e.g. whsec_$(openssl rand -base64 32)",
            bytes.len()
        ));
    }
    // Kept as hex so that `Secret` stays a string.
    Ok(hex::encode(bytes))
}

/// Turns the `config` crate's error into a sentence that names the key.
fn describe_config_error(e: &config::ConfigError) -> String {
    let s = e.to_string();
    if let Some(rest) = s.strip_prefix("missing field ") {
        return format!(
            "missing key {rest}: add it (see deploy/local/forewarn.toml for the full shape)"
        );
    }
    if s.contains("unknown field") {
        return format!(
            "{s}: remove or rename the key (keys are listed in README.md, section Configuration)"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("forewarn.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(body.as_bytes()).unwrap();
        path
    }

    const MINIMAL: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
topics = ["behavior-events"]
[channels.outbox]
type = "file"
dir = "./outbox"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::load_with_env(&write(dir.path(), MINIMAL), vec![]).unwrap();
        assert_eq!(cfg.kafka.group_id, "forewarn");
        assert_eq!(cfg.admin_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(cfg.allowed_lateness, Duration::from_secs(5));
        assert_eq!(cfg.events.customer.to_string(), "customer_id");
        assert!(matches!(cfg.channels["outbox"].kind, ChannelKind::File(_)));
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::load_with_env(
            &write(dir.path(), MINIMAL),
            vec![
                ("FOREWARN__KAFKA__BROKERS".into(), "10.0.0.1:9093".into()),
                ("FOREWARN__KAFKA__TOPICS".into(), "a,b".into()),
                ("FOREWARN__ADMIN__LISTEN".into(), "0.0.0.0:9000".into()),
                ("UNRELATED".into(), "x".into()),
            ],
        )
        .unwrap();
        assert_eq!(cfg.kafka.brokers, "10.0.0.1:9093");
        assert_eq!(cfg.kafka.topics, vec!["a", "b"]);
        assert_eq!(cfg.admin_listen.port(), 9000);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let body = r#"
[kafka]
brokers = ""
topics = []
[events]
allowed_lateness = "5 parsecs"
[admin]
listen = "localhost"
[channels.email]
type = "smtp"
tls = "sometimes"
username = "me"
[channels.pager]
type = "carrier-pigeon"
"#;
        let err = Config::load_with_env(&write(dir.path(), body), vec![]).unwrap_err();
        let text = err.to_string();
        for needle in [
            "kafka.brokers is empty",
            "kafka.topics is empty",
            "events.allowed_lateness = \"5 parsecs\"",
            "admin.listen = \"localhost\"",
            "channels.email.host is missing",
            "channels.email.tls = \"sometimes\"",
            "channels.email.username is set without a password",
            "channels.pager.type = \"carrier-pigeon\"",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(err.problems.len(), 8, "{text}");
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!("{MINIMAL}\n[state]\ndirectory = \"x\"\n");
        let err = Config::load_with_env(&write(dir.path(), &body), vec![]).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let body = format!(
            "{MINIMAL}\n[channels.email]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nusername = \"u\"\npassword_file = {:?}\n",
            pw.display().to_string()
        );
        let cfg = Config::load_with_env(&write(dir.path(), &body), vec![]).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        let ChannelKind::Smtp(smtp) = &cfg.channels["email"].kind else {
            panic!("smtp expected")
        };
        assert_eq!(smtp.credentials.as_ref().unwrap().1.expose(), "hunter2");
    }

    fn kafka_problems(dir: &Path, properties: &str) -> Vec<String> {
        let body = format!("{MINIMAL}\n[kafka.properties]\n{properties}\n");
        match Config::load_with_env(&write(dir, &body), vec![]) {
            Ok(_) => vec![],
            Err(e) => e.problems,
        }
    }

    #[test]
    fn a_half_configured_kafka_security_setup_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = d.join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let key = d.join("client.key");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let der = d.join("ca.der");
        std::fs::write(&der, [0x30u8, 0x82, 0x01, 0x0a]).unwrap();
        let ca_s = ca.display().to_string();
        let cases: Vec<(String, &str)> = vec![
            (
                "\"security.protocol\" = \"TLS\"".into(),
                "kafka.properties.\"security.protocol\" = \"TLS\" is not a protocol librdkafka knows: use \"SASL_SSL\"",
            ),
            (
                format!("\"ssl.ca.location\" = {ca_s:?}"),
                "kafka.properties.\"ssl.ca.location\" is set but security.protocol is not set (PLAINTEXT), so TLS is off and it would be ignored: set kafka.properties.\"security.protocol\" = \"SSL\"",
            ),
            (
                "\"security.protocol\" = \"SSL\"\n\"sasl.username\" = \"u\"".into(),
                "\"sasl.username\" is set but security.protocol is \"SSL\", so SASL is off and it would be ignored: set kafka.properties.\"security.protocol\" = \"SASL_SSL\"",
            ),
            (
                "\"security.protocol\" = \"SASL_SSL\"".into(),
                "but sasl.mechanisms is not set (librdkafka would try Kerberos)",
            ),
            (
                "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"forewarn\"".into(),
                "\"sasl.mechanisms\" = \"SCRAM-SHA-512\" needs sasl.password, which is not set: set kafka.properties.\"sasl.password\" to its password; better from the environment: kafka.properties_env.\"sasl.password\"",
            ),
            (
                "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM\"".into(),
                "\"sasl.mechanisms\" = \"SCRAM\" is not a SASL mechanism librdkafka knows",
            ),
            (
                format!("\"security.protocol\" = \"SSL\"\n\"ssl.key.location\" = {:?}", key.display().to_string()),
                "\"ssl.key.location\" is set without ssl.certificate.location: a private key (mutual TLS) needs its certificate too",
            ),
            (
                format!("\"security.protocol\" = \"SSL\"\n\"ssl.certificate.location\" = {ca_s:?}"),
                "\"ssl.certificate.location\" is set without ssl.key.location",
            ),
            (
                "\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"/nonexistent/ca.pem\"".into(),
                "kafka.properties.\"ssl.ca.location\" = \"/nonexistent/ca.pem\" cannot be read",
            ),
            (
                format!("\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = {:?}", der.display().to_string()),
                "holds no PEM CA certificate (no \"-----BEGIN CERTIFICATE-----\" line): convert it",
            ),
            (
                format!("\"security.protocol\" = \"SSL\"\n\"ssl.certificate.location\" = {ca_s:?}\n\"ssl.key.location\" = {ca_s:?}"),
                "holds no PEM private key",
            ),
        ];
        for (props, want) in cases {
            let problems = kafka_problems(d, &props);
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{props}\nwanted {want:?} in {problems:#?}"
            );
        }

        // Whole setups pass: SASL_SSL with SCRAM, and mutual TLS.
        for props in [
            format!("\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"forewarn\"\n\"sasl.password\" = \"pw\"\n\"ssl.ca.location\" = {ca_s:?}"),
            format!("\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = {:?}\n\"ssl.certificate.location\" = {ca_s:?}\n\"ssl.key.location\" = {:?}", d.display().to_string(), key.display().to_string()),
            "\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"probe\"".into(),
        ] {
            assert_eq!(kafka_problems(d, &props), Vec::<String>::new(), "{props}");
        }
    }

    #[test]
    fn kafka_secrets_come_from_the_environment_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("FOREWARN_TEST_KAFKA_SASL_PW", "kafka-hunter2");
        let body = format!(
            "{MINIMAL}\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\"sasl.username\" = \"forewarn\"\n[kafka.properties_env]\n\"sasl.password\" = \"FOREWARN_TEST_KAFKA_SASL_PW\"\n"
        );
        let cfg = Config::load_with_env(&write(dir.path(), &body), vec![]).unwrap();
        assert_eq!(
            cfg.kafka.properties.get("sasl.password"),
            Some("kafka-hunter2")
        );
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("kafka-hunter2"), "{dbg}");
        assert!(
            dbg.contains(r#""sasl.password": [redacted], "sasl.username": "forewarn""#),
            "{dbg}"
        );

        let body = format!(
            "{MINIMAL}\n[kafka.properties_env]\n\"sasl.password\" = \"FOREWARN_TEST_KAFKA_UNSET\"\n"
        );
        let err = Config::load_with_env(&write(dir.path(), &body), vec![]).unwrap_err();
        assert!(
            err.to_string().contains("kafka.properties_env.\"sasl.password\" = \"FOREWARN_TEST_KAFKA_UNSET\", but that environment variable is not set"),
            "{err}"
        );
    }

    #[test]
    fn webhook_kafka_and_dispatcher_keys() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("whsec");
        std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let body = format!(
            "{MINIMAL}\n[channels.cx]\ntype = \"webhook\"\nurl = \"https://hooks.example.com/x\"\nsecret_file = {:?}\nformat = \"slack\"\nrate_limit = \"100/min\"\nconcurrency = 2\nmax_age = \"30m\"\n[channels.stream]\ntype = \"kafka\"\ntopic = \"notifications\"\n",
            secret.display().to_string()
        );
        let cfg = Config::load_with_env(&write(dir.path(), &body), vec![]).unwrap();
        let cx = &cfg.channels["cx"];
        let ChannelKind::Webhook(w) = &cx.kind else {
            panic!("webhook expected")
        };
        assert_eq!(w.format, WebhookFormat::Slack);
        assert!(w.secret.is_some());
        assert!(!cx.kind.needs_address());
        assert_eq!(cx.concurrency, 2);
        assert_eq!(cx.retry.max_age, Duration::from_secs(1800));
        assert_eq!(
            cx.rate_limit,
            Some(RateLimit {
                count: 100,
                per: Duration::from_secs(60)
            })
        );
        let ChannelKind::Kafka(k) = &cfg.channels["stream"].kind else {
            panic!("kafka expected")
        };
        assert_eq!(k.brokers, "127.0.0.1:9092", "defaults to kafka.brokers");
        assert_eq!(cfg.channels["outbox"].concurrency, 1);
    }

    #[test]
    fn channel_mistakes_are_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "{MINIMAL}\n[channels.cx]\ntype = \"webhook\"\nurl = \"hooks.example.com\"\nsecret_env = \"FOREWARN_TEST_SHORT_SECRET\"\nhost = \"x\"\nrate_limit = \"fast\"\n[channels.stream]\ntype = \"kafka\"\nconcurrency = 0\n[channels.stream.properties]\nacks = \"1\"\n"
        );
        let err = Config::load_with_env(&write(dir.path(), &body), vec![])
            .map(|_| ())
            .unwrap_err();
        // The secret env var is unset in tests: that is reported too.
        let text = err.to_string();
        for needle in [
            "channels.cx.url = \"hooks.example.com\": give the http:// or https:// address",
            "channels.cx.secret_env = \"FOREWARN_TEST_SHORT_SECRET\", but that environment variable is not set",
            "channels.cx.host does not apply to a webhook channel",
            "channels.cx.rate_limit = \"fast\" is not a rate",
            "channels.stream.topic is missing",
            "channels.stream.concurrency = 0",
            "channels.stream.properties.\"acks\" is managed by forewarn",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn webhook_secrets_must_be_standard_webhooks_keys() {
        assert!(webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(webhook_key("hunter2").unwrap_err().contains("whsec_"));
        assert!(webhook_key("whsec_c2hvcnQ=")
            .unwrap_err()
            .contains("bytes long"));
        assert!(webhook_key("whsec_!!!").unwrap_err().contains("base64"));
    }
}
