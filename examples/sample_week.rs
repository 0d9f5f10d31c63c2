//! Generates `rules/samples/week.jsonl.gz`: one plausible week of a web
//! shop's customer events (about 50,000), for `forewarn replay`, its
//! report and the rules guide.
//!
//! ```sh
//! cargo run --example sample_week -- --out rules/samples/week.jsonl.gz
//! cargo run --example sample_week -- --out /tmp/big.jsonl --customers 20000 --days 14 --seed 7
//! ```
//!
//! Three thousand customers in eleven time zones browse, search, check out
//! and order on a daily curve in their own local time (quiet at night,
//! different at weekends), pay, renew subscriptions, hit app bugs, and wait
//! for parcels. Around that everyday traffic are the stories the shipped
//! rules are about: abandoned checkouts (and small ones the rule ignores),
//! checkouts that end in a support ticket or start again, bursts of failed
//! payments, declined renewals, app builds inside and outside the known-bug
//! version ranges, late, lost and cancelled parcels, carrier delays either
//! side of a day, customers who opted out of marketing or left no email
//! address, a few redelivered events and a few broken lines. How often each
//! happens is in the tables under "the shape of the week".
//!
//! The output depends on the options only, never on a crate version or the
//! platform: the random numbers come from the splitmix64 generator below,
//! all arithmetic is on integers, the JSON is written by hand, and local
//! times use the fixed UTC offsets in [`ZONES`] (right for late November;
//! `tests/sample_dataset.rs` checks them against the time zone database,
//! and that the committed file is exactly what this writes).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

// ------------------------------------------------------------------ options

/// What to generate. The defaults make the committed sample.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub customers: u32,
    pub days: u32,
    /// The first day (from UTC midnight) as (year, month, day).
    pub start: (i64, u32, u32),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 20_261_116,
            customers: 3_000,
            days: 7,
            start: (2026, 11, 16),
        }
    }
}

/// The generated JSONL and what is in it.
pub struct Generated {
    pub jsonl: String,
    /// Lines written, broken and repeated ones included.
    pub lines: usize,
    pub invalid: usize,
    /// Events written twice with the same event_id (redeliveries).
    pub redelivered: usize,
}

// ------------------------------------------------------- the shape of the week
//
// Weights are relative to each other; chances are per mille.

/// Where customers live: the IANA name their events carry, its UTC offset
/// in late November 2026 in minutes, how many customers live there
/// (weight), the shop's currency and price level there (per mille of the
/// euro price), the carriers and days in transit, and which names.
pub struct Zone {
    pub name: &'static str,
    pub offset_minutes: i64,
    pub weight: u32,
    pub currency: &'static str,
    pub price_per_mille: i64,
    pub carriers: &'static [&'static str],
    pub transit_days: (i64, i64),
    pub names: usize,
}

#[rustfmt::skip]
pub const ZONES: &[Zone] = &[
    Zone { name: "Europe/Berlin", offset_minutes: 60, weight: 300, currency: "EUR", price_per_mille: 1000, carriers: &["DHL", "DPD", "Hermes"], transit_days: (1, 2), names: 0 },
    Zone { name: "Europe/Paris", offset_minutes: 60, weight: 90, currency: "EUR", price_per_mille: 1000, carriers: &["Colissimo", "DPD", "Chronopost"], transit_days: (1, 3), names: 1 },
    Zone { name: "Europe/Madrid", offset_minutes: 60, weight: 60, currency: "EUR", price_per_mille: 1000, carriers: &["Correos", "SEUR"], transit_days: (2, 3), names: 2 },
    Zone { name: "Europe/London", offset_minutes: 0, weight: 110, currency: "GBP", price_per_mille: 870, carriers: &["Royal Mail", "DPD", "Evri"], transit_days: (1, 3), names: 3 },
    Zone { name: "America/New_York", offset_minutes: -300, weight: 150, currency: "USD", price_per_mille: 1050, carriers: &["UPS", "USPS", "FedEx"], transit_days: (2, 4), names: 4 },
    Zone { name: "America/Chicago", offset_minutes: -360, weight: 50, currency: "USD", price_per_mille: 1050, carriers: &["UPS", "USPS", "FedEx"], transit_days: (2, 4), names: 4 },
    Zone { name: "America/Los_Angeles", offset_minutes: -480, weight: 80, currency: "USD", price_per_mille: 1050, carriers: &["UPS", "USPS", "FedEx"], transit_days: (3, 5), names: 4 },
    Zone { name: "America/Sao_Paulo", offset_minutes: -180, weight: 30, currency: "USD", price_per_mille: 1050, carriers: &["FedEx", "DHL Express"], transit_days: (4, 6), names: 5 },
    Zone { name: "Asia/Tokyo", offset_minutes: 540, weight: 60, currency: "USD", price_per_mille: 1050, carriers: &["Yamato", "Sagawa", "DHL Express"], transit_days: (3, 5), names: 6 },
    Zone { name: "Asia/Kolkata", offset_minutes: 330, weight: 30, currency: "USD", price_per_mille: 1050, carriers: &["Blue Dart", "DHL Express"], transit_days: (4, 6), names: 7 },
    Zone { name: "Australia/Sydney", offset_minutes: 660, weight: 40, currency: "AUD", price_per_mille: 1620, carriers: &["Australia Post", "DHL Express"], transit_days: (4, 6), names: 8 },
];

/// First names (as shown, as in an address) per naming group of [`Zone::names`].
#[rustfmt::skip]
const FIRST: &[&[(&str, &str)]] = &[
    &[("Lena", "lena"), ("Jonas", "jonas"), ("Mia", "mia"), ("Lukas", "lukas"), ("Hannah", "hannah"), ("Felix", "felix"), ("Sophie", "sophie"), ("Paul", "paul"), ("Emma", "emma"), ("Jürgen", "juergen"), ("Katrin", "katrin"), ("Tobias", "tobias"), ("Anja", "anja"), ("Mehmet", "mehmet"), ("Elif", "elif"), ("Björn", "bjoern")],
    &[("Léa", "lea"), ("Hugo", "hugo"), ("Chloé", "chloe"), ("Louis", "louis"), ("Camille", "camille"), ("Théo", "theo"), ("Manon", "manon"), ("Nicolas", "nicolas"), ("Inès", "ines"), ("Amine", "amine")],
    &[("Lucía", "lucia"), ("Hugo", "hugo"), ("Martina", "martina"), ("Pablo", "pablo"), ("Carmen", "carmen"), ("Javier", "javier"), ("Nerea", "nerea"), ("Álvaro", "alvaro")],
    &[("Olivia", "olivia"), ("Harry", "harry"), ("Amelia", "amelia"), ("George", "george"), ("Isla", "isla"), ("Noah", "noah"), ("Priya", "priya"), ("Callum", "callum"), ("Siobhan", "siobhan")],
    &[("Ava", "ava"), ("Liam", "liam"), ("Madison", "madison"), ("Ethan", "ethan"), ("Sofia", "sofia"), ("Mason", "mason"), ("Aaliyah", "aaliyah"), ("Diego", "diego"), ("Grace", "grace"), ("Tyler", "tyler"), ("Mei", "mei"), ("Jamal", "jamal")],
    &[("Ana", "ana"), ("João", "joao"), ("Beatriz", "beatriz"), ("Gabriel", "gabriel"), ("Larissa", "larissa"), ("Rafael", "rafael")],
    &[("Yui", "yui"), ("Haruto", "haruto"), ("Aoi", "aoi"), ("Sota", "sota"), ("Hana", "hana"), ("Ren", "ren"), ("Mei", "mei")],
    &[("Aarav", "aarav"), ("Ananya", "ananya"), ("Vivaan", "vivaan"), ("Diya", "diya"), ("Rohan", "rohan"), ("Isha", "isha")],
    &[("Charlotte", "charlotte"), ("Jack", "jack"), ("Ruby", "ruby"), ("Oliver", "oliver"), ("Matilda", "matilda"), ("Lachlan", "lachlan")],
];

/// Family names, as in an address, per naming group.
#[rustfmt::skip]
const LAST: &[&[&str]] = &[
    &["mueller", "schmidt", "schneider", "fischer", "weber", "wagner", "becker", "hoffmann", "koch", "yilmaz", "richter", "wolf"],
    &["martin", "bernard", "dubois", "thomas", "robert", "petit", "durand", "moreau", "benali"],
    &["garcia", "fernandez", "lopez", "martinez", "sanchez", "romero", "navarro"],
    &["smith", "jones", "taylor", "brown", "williams", "wilson", "patel", "evans", "murphy"],
    &["johnson", "miller", "davis", "rodriguez", "nguyen", "kim", "jackson", "lee", "walker", "chen"],
    &["silva", "santos", "oliveira", "souza", "pereira", "costa"],
    &["sato", "suzuki", "takahashi", "tanaka", "watanabe", "ito"],
    &["sharma", "iyer", "reddy", "gupta", "nair", "mehta"],
    &["smith", "nguyen", "kelly", "wilson", "taylor", "brown"],
];

/// Address patterns: first.last, firstlast, f.last.
const EMAIL_PATTERNS: [u32; 3] = [60, 20, 20];
/// Addresses at example.com; the rest are at example.org.
const AT_EXAMPLE_COM: u32 = 700;
/// Guest accounts that signed up with a phone number only: no email.
const NO_EMAIL: u32 = 15;
/// Customers whose events carry no name (the templates say "Hi there").
const NO_NAME: u32 = 30;
/// Customers whose events carry no time zone (the policy's default applies).
const NO_TIMEZONE: u32 = 40;
/// `consent.marketing` true, false, or no consent flags on the events.
const CONSENT: [u32; 3] = [64, 9, 27];

/// Share of a customer's traffic per local hour: quiet nights, a lunch
/// bump, the evening peak; later mornings and longer days at weekends.
#[rustfmt::skip]
const WEEKDAY_HOURS: [u32; 24] = [6, 4, 2, 2, 2, 3, 6, 12, 18, 20, 20, 22, 26, 24, 20, 20, 21, 24, 30, 38, 42, 40, 30, 15];
#[rustfmt::skip]
const WEEKEND_HOURS: [u32; 24] = [10, 6, 3, 2, 2, 2, 3, 6, 12, 20, 26, 30, 30, 28, 26, 26, 26, 28, 32, 36, 38, 34, 26, 16];
/// Monday … Sunday.
const DAY_WEIGHTS: [u32; 7] = [100, 98, 100, 104, 96, 84, 94];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Platform {
    Ios,
    Android,
    Web,
}

const PLATFORMS: &[(Platform, u32)] = &[
    (Platform::Ios, 42),
    (Platform::Android, 38),
    (Platform::Web, 20),
];
/// iOS builds: 4.2.0–4.2.2 freeze the payment sheet (BUG-1423, fixed in 4.2.3).
const IOS_BUILDS: &[(&str, u32)] = &[
    ("4.1.9", 8),
    ("4.2.0", 10),
    ("4.2.1", 15),
    ("4.2.2", 17),
    ("4.2.3", 30),
    ("4.3.0", 20),
];
const IOS_VERSIONS: &[(&str, u32)] = &[("17.7", 25), ("18.1", 55), ("18.2", 20)];
/// Android builds: on Android 14, photo uploads fail before 4.3.0 (BUG-1501).
const ANDROID_BUILDS: &[(&str, u32)] = &[
    ("4.1.9", 10),
    ("4.2.1", 20),
    ("4.2.2", 20),
    ("4.2.3", 25),
    ("4.3.0", 25),
];
const ANDROID_VERSIONS: &[(&str, u32)] = &[("12", 15), ("13", 25), ("14", 38), ("15", 22)];
const WEB_BUILD: &str = "2026.11.2";
/// iOS customers on a BUG-1423 build who update to 4.2.3 during the week.
const UPDATES_DURING_WEEK: u32 = 350;

/// Visits a week: light, regular and heavy shoppers (ranges of visits).
const ACTIVITY: &[((i64, i64), u32)] = &[((1, 2), 55), ((2, 6), 33), ((6, 12), 12)];
/// Per mille of a customer's checkout payments that fail: most cards
/// work, some customers have a card that often fails.
const CARD_TROUBLE: &[(u32, u32)] = &[(20, 80), (150, 15), (450, 5)];
/// Subscribers, and their plans (name, monthly price in euro cents).
const SUBSCRIBERS: u32 = 300;
const PLANS: &[((&str, i64), u32)] = &[
    (("Solo", 999), 55),
    (("Family", 1999), 30),
    (("Pro", 2999), 15),
];
/// Customers with a parcel from an order placed in the days before.
const BACKLOG_ORDER: u32 = 120;
/// Customers whose one-off payment (a gift card top-up) fails in the
/// period: no rule's business.
const ONE_OFF_FAILURE: u32 = 12;

/// In a visit: mobile customers who open the app, others who log in.
const OPENS_APP: u32 = 700;
const LOGS_IN: u32 = 350;
const LOGIN_METHODS: &[(&str, u32)] = &[
    ("password", 50),
    ("google", 20),
    ("apple", 15),
    ("magic_link", 15),
];
/// Pages, searches and product views per visit (range), and their mix.
const VIEWS: (i64, i64) = (1, 5);
const VIEW_MIX: [u32; 3] = [50, 20, 30];
/// Android visits that post a review with a photo.
const REVIEWS: u32 = 60;
/// On Android 13, an upload fails now and then too (not the known bug).
const UPLOAD_FAILS_ON_13: u32 = 300;
/// App visits with an error no known bug covers.
const OTHER_ERRORS: u32 = 30;
const OTHER_ERROR_CODES: &[(&str, u32)] = &[
    ("NETWORK_TIMEOUT", 50),
    ("IMAGE_DECODE", 15),
    ("SESSION_EXPIRED", 25),
    ("PUSH_TOKEN_INVALID", 10),
];
const SCREENS: &[(&str, u32)] = &[
    ("home", 40),
    ("product", 30),
    ("search", 20),
    ("account", 10),
];
/// Visits that go to checkout; of the others, those that leave something in the cart.
const CHECKS_OUT: u32 = 260;
const ADDS_TO_CART: u32 = 150;
const CART_ITEMS: &[(i64, u32)] = &[(1, 45), (2, 30), (3, 15), (4, 7), (5, 3)];

/// iOS checkouts on a BUG-1423 build that freeze; the same error code on
/// other builds (a bad network); those who give up after it.
const SHEET_FREEZES: u32 = 450;
const SHEET_TIMEOUT_ELSEWHERE: u32 = 25;
const GIVES_UP_AFTER_FREEZE: u32 = 500;
/// Checkouts with a gift card rejected; of those, cards from before 2024 (BUG-1522).
const GIFT_CARD_REJECTED: u32 = 20;
const OLD_GIFT_CARD: u32 = 600;

/// How a checkout ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Pays (perhaps after a failed attempt or two) and orders within minutes.
    Orders,
    /// Comes back and orders after the 30 minutes.
    OrdersLater,
    /// Asks support first; half of them order after.
    AsksSupport,
    /// Changes the cart and starts checkout again.
    StartsAgain,
    /// Stuck at the till: failed payments in quick succession.
    StuckAtTill,
    /// Three failed payments spread over more than ten minutes.
    SlowFailures,
    /// Leaves.
    Leaves,
}

const ENDINGS: &[(Ending, u32)] = &[
    (Ending::Orders, 700),
    (Ending::OrdersLater, 30),
    (Ending::AsksSupport, 45),
    (Ending::StartsAgain, 40),
    (Ending::StuckAtTill, 40),
    (Ending::SlowFailures, 10),
    (Ending::Leaves, 135),
];
const FAILS_BEFORE_ORDER: &[(u32, u32)] = &[(1, 70), (2, 30)];
const FAILS_AT_TILL: &[(u32, u32)] = &[(2, 40), (3, 35), (4, 15), (5, 10)];
/// At the till: those who then order with another card; those who come
/// back within two hours and try again.
const ORDERS_AFTER_TILL: u32 = 400;
const TRIES_AGAIN: u32 = 350;
const TICKET_TOPICS: &[(&str, u32)] = &[
    ("delivery_time", 40),
    ("coupon", 30),
    ("payment", 20),
    ("sizing", 10),
];
const TICKET_CHANNELS: &[(&str, u32)] = &[("chat", 55), ("email", 35), ("phone", 10)];
const CHECKOUT_DECLINES: &[(&str, u32)] = &[
    ("card_declined", 45),
    ("insufficient_funds", 20),
    ("authentication_failed", 20),
    ("expired_card", 10),
    ("processing_error", 5),
];

/// What becomes of a parcel.
#[derive(Debug, Clone, Copy)]
enum Fate {
    OnTime,
    /// After the promised time, within the two hours' grace.
    WithinGrace,
    /// Late, with no word from the carrier.
    Late,
    /// The carrier reports a delay while the parcel travels.
    CarrierDelay,
    /// Never scanned as delivered.
    NeverScanned,
    /// Cancelled on its way; the event names the shipment.
    Cancelled,
    /// Cancelled by a system that knows only the order.
    CancelledOrderOnly,
}

const FATES: &[(Fate, u32)] = &[
    (Fate::OnTime, 840),
    (Fate::WithinGrace, 40),
    (Fate::Late, 45),
    (Fate::CarrierDelay, 60),
    (Fate::NeverScanned, 30),
    (Fate::Cancelled, 15),
    (Fate::CancelledOrderOnly, 10),
];
/// Shipments whose carrier gives no promised delivery time.
const NO_PROMISE: u32 = 12;
const DELAY_HOURS: &[(i64, u32)] = &[
    (4, 6),
    (8, 8),
    (12, 10),
    (18, 8),
    (20, 6),
    (22, 6),
    (23, 5),
    (24, 14),
    (26, 6),
    (30, 5),
    (36, 8),
    (48, 12),
    (72, 6),
];
/// Delay reports without a new date; carriers that send a report twice.
const DELAY_WITHOUT_ETA: u32 = 60;
const DELAY_SENT_TWICE: u32 = 40;
/// Late parcels whose customer asks where it is.
const ASKS_WHERE: u32 = 300;

/// Renewals: the first charge fails this often, a retry the next night
/// this often; customers who fix their card after a failure.
const RENEWAL_FAILS: u32 = 110;
const RETRY_FAILS: u32 = 550;
const FIXES_CARD: u32 = 350;
const RENEWAL_DECLINES: &[(&str, u32)] = &[
    ("card_declined", 35),
    ("expired_card", 25),
    ("insufficient_funds", 20),
    ("do_not_honor", 8),
    ("processing_error", 7),
    ("authentication_required", 5),
];

/// Products: (sku, price in euro cents).
#[rustfmt::skip]
const PRODUCTS: &[(&str, i64)] = &[
    ("SKU-10231", 499), ("SKU-10237", 990), ("SKU-10412", 1250), ("SKU-10415", 1499),
    ("SKU-11020", 1990), ("SKU-11021", 2490), ("SKU-11300", 2990), ("SKU-11302", 3490),
    ("SKU-12011", 3990), ("SKU-12044", 4990), ("SKU-12050", 5490), ("SKU-13007", 6990),
    ("SKU-13010", 7990), ("SKU-14001", 8990), ("SKU-14410", 12900), ("SKU-15000", 19900),
];
#[rustfmt::skip]
const PAGES: &[(&str, u32)] = &[
    ("/", 30), ("/c/jackets", 10), ("/c/shoes", 10), ("/c/bags", 6), ("/c/home", 6),
    ("/c/sale", 9), ("/account", 5), ("/account/orders", 7), ("/help/shipping", 3),
    ("/help/returns", 2), ("/wishlist", 4), ("/gift-cards", 2),
];
#[rustfmt::skip]
const QUERIES: &[&str] = &[
    "rain jacket", "running shoes", "backpack", "wool socks", "gift card", "winter boots",
    "yoga mat", "lamp", "duvet cover", "sneakers white", "thermos", "beanie", "laptop sleeve",
];

/// Broken lines, placed among everyday events: cut off part-way (a writer
/// that crashed), no type, no customer, local time without a zone, a
/// day-first date.
const BROKEN: [Broken; 8] = [
    Broken::Truncated,
    Broken::Truncated,
    Broken::Truncated,
    Broken::NoType,
    Broken::NoType,
    Broken::NoCustomer,
    Broken::TimeWithoutZone,
    Broken::DayFirstTime,
];
/// Events delivered twice with the same event_id, by kind.
const REDELIVERED: [(Tag, usize); 6] = [
    (Tag::Noise, 3),
    (Tag::Order, 1),
    (Tag::Story, 1),
    (Tag::PaymentPair, 1),
    (Tag::LongDelay, 1),
    (Tag::KnownBug, 1),
];

// ---------------------------------------------------------------- randomness

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and fixed forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator of its own for `stream` (a customer, a pass), so that
    /// one customer's story does not shift every other's.
    pub fn derive(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True `per_mille` times in a thousand.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// An index into `weights`, in proportion to them.
    pub fn index(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < u64::from(w) {
                return i;
            }
            x -= u64::from(w);
        }
        weights.len() - 1
    }

    /// One of `items`, in proportion to their weights.
    pub fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let weights: Vec<u32> = items.iter().map(|(_, w)| *w).collect();
        items[self.index(&weights)].0
    }
}

// ---------------------------------------------------------------- calendar

const MIN: i64 = 60;
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Seconds since the epoch as RFC 3339 in UTC, e.g. `2026-11-16T08:00:00Z`.
pub fn rfc3339(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(DAY));
    let s = t.rem_euclid(DAY);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / HOUR,
        s % HOUR / MIN,
        s % MIN
    )
}

/// Monday = 0 … Sunday = 6, of a day number (days since 1970-01-01).
fn weekday(day: i64) -> i64 {
    (day + 3).rem_euclid(7)
}

// ---------------------------------------------------------------- the world

struct Customer {
    id: String,
    name: Option<&'static str>,
    email: Option<String>,
    zone: &'static Zone,
    /// Whether the events carry `customer.timezone`.
    timezone_known: bool,
    /// `customer.consent.marketing`, when the events carry consent flags.
    marketing: Option<bool>,
    platform: Platform,
    build: &'static str,
    os_version: &'static str,
    /// The app was updated to this build at this time.
    update: Option<(i64, &'static str)>,
    visits: i64,
    /// Per mille of checkout payments that fail.
    card_trouble: u32,
    /// (plan, monthly price in euro cents) of a subscription.
    plan: Option<(&'static str, i64)>,
}

impl Customer {
    fn build_at(&self, t: i64) -> &'static str {
        match self.update {
            Some((at, b)) if t >= at => b,
            _ => self.build,
        }
    }

    /// Local cents of a price in euro cents.
    fn price(&self, euro_cents: i64) -> i64 {
        euro_cents * self.zone.price_per_mille / 1000
    }

    /// The `customer` object events about them carry.
    fn json(&self) -> String {
        let mut m = Vec::new();
        if let Some(e) = &self.email {
            m.push(format!("\"email\":{}", js(e)));
        }
        if let Some(n) = self.name {
            m.push(format!("\"name\":{}", js(n)));
        }
        if self.timezone_known {
            m.push(format!("\"timezone\":{}", js(self.zone.name)));
        }
        if let Some(b) = self.marketing {
            m.push(format!("\"consent\":{{\"marketing\":{b}}}"));
        }
        format!("{{{}}}", m.join(","))
    }
}

/// What an event is, for choosing which to break or repeat afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Noise,
    Story,
    /// One of exactly two failed checkout payments within ten minutes.
    PaymentPair,
    /// A carrier delay of a day or more.
    LongDelay,
    /// An app error that matches a known bug.
    KnownBug,
    Order,
}

struct Ev {
    t: i64,
    seq: u64,
    kind: &'static str,
    customer: u32,
    /// Carries the `customer` object.
    with_customer: bool,
    /// The members after the envelope, each starting with a comma.
    body: String,
    tag: Tag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    Truncated,
    NoType,
    NoCustomer,
    TimeWithoutZone,
    DayFirstTime,
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Cents as a JSON number with two decimals: always a decimal point, so
/// that rules compare it with decimals (`event.cart.total >= 20.0`).
fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn order_id(r: &mut Rng, placed: i64) -> String {
    let (y, m, d) = civil_from_days(placed.div_euclid(DAY));
    format!("A-{:02}{m:02}{d:02}-{:04}", y % 100, r.range(0, 9999))
}

struct World {
    opts: Options,
    start: i64,
    end: i64,
    customers: Vec<Customer>,
    events: Vec<Ev>,
    seq: u64,
    shipments: u64,
}

impl World {
    fn new(opts: &Options) -> World {
        let (y, m, d) = opts.start;
        let start = days_from_civil(y, m, d) * DAY;
        World {
            opts: opts.clone(),
            start,
            end: start + i64::from(opts.days) * DAY,
            customers: Vec::new(),
            events: Vec::new(),
            seq: 0,
            shipments: 0,
        }
    }

    fn c(&self, c: u32) -> &Customer {
        &self.customers[c as usize]
    }

    /// Records an event, if it falls inside the period.
    fn push(&mut self, t: i64, c: u32, kind: &'static str, body: String, tag: Tag) {
        self.push_full(t, c, kind, false, body, tag);
    }

    /// The same, with the customer object on the event.
    fn push_c(&mut self, t: i64, c: u32, kind: &'static str, body: String, tag: Tag) {
        self.push_full(t, c, kind, true, body, tag);
    }

    fn push_full(
        &mut self,
        t: i64,
        customer: u32,
        kind: &'static str,
        with_customer: bool,
        body: String,
        tag: Tag,
    ) {
        if t < self.start || t >= self.end {
            return;
        }
        self.seq += 1;
        self.events.push(Ev {
            t,
            seq: self.seq,
            kind,
            customer,
            with_customer,
            body,
            tag,
        });
    }

    /// A moment on the customer's local daily curve, on one of the days of
    /// the period.
    fn local_time(&self, r: &mut Rng, c: u32) -> i64 {
        let offset = self.c(c).zone.offset_minutes * MIN;
        let first = self.start / DAY;
        let days: Vec<i64> = (first..first + i64::from(self.opts.days)).collect();
        let weights: Vec<u32> = days
            .iter()
            .map(|&d| DAY_WEIGHTS[weekday(d) as usize])
            .collect();
        let mut t = self.start;
        // Local days reach over the period's UTC edges: draw again then.
        for _ in 0..20 {
            let day = days[r.index(&weights)];
            let hours = if weekday(day) >= 5 {
                &WEEKEND_HOURS
            } else {
                &WEEKDAY_HOURS
            };
            let hour = r.index(hours) as i64;
            t = day * DAY + hour * HOUR + r.range(0, HOUR - 1) - offset;
            if t >= self.start && t < self.end {
                break;
            }
        }
        t
    }

    /// The first moment at or after `t` in the customer's delivery hours
    /// (08:00–21:00 local): carriers scan parcels by day.
    fn by_day(&self, c: u32, t: i64, r: &mut Rng) -> i64 {
        let offset = self.c(c).zone.offset_minutes * MIN;
        let local = t + offset;
        let day = local.div_euclid(DAY);
        let morning = |d: i64, r: &mut Rng| d * DAY + 8 * HOUR + r.range(0, 3 * HOUR) - offset;
        match local.rem_euclid(DAY) {
            s if s < 8 * HOUR => morning(day, r),
            s if s >= 21 * HOUR => morning(day + 1, r),
            _ => t,
        }
    }

    fn make_customers(&mut self) {
        let zones: Vec<(&'static Zone, u32)> = ZONES.iter().map(|z| (z, z.weight)).collect();
        let mut emails = HashSet::new();
        for i in 0..self.opts.customers {
            let mut r = Rng::derive(self.opts.seed, u64::from(i) << 8);
            let zone = r.weighted(&zones);
            let (first, first_ascii) = *r.pick(FIRST[zone.names]);
            let last = *r.pick(LAST[zone.names]);
            let domain = if r.chance(AT_EXAMPLE_COM) {
                "example.com"
            } else {
                "example.org"
            };
            let mut local = match r.index(&EMAIL_PATTERNS) {
                0 => format!("{first_ascii}.{last}"),
                1 => format!("{first_ascii}{last}"),
                _ => format!("{}.{last}", &first_ascii[..1]),
            };
            while !emails.insert(format!("{local}@{domain}")) {
                let _ = write!(local, "{}", r.range(1, 9));
            }
            let email = (!r.chance(NO_EMAIL)).then(|| format!("{local}@{domain}"));
            let platform = r.weighted(PLATFORMS);
            let (build, os_version) = match platform {
                Platform::Ios => (r.weighted(IOS_BUILDS), r.weighted(IOS_VERSIONS)),
                Platform::Android => (r.weighted(ANDROID_BUILDS), r.weighted(ANDROID_VERSIONS)),
                Platform::Web => (WEB_BUILD, ""),
            };
            let (lo, hi) = r.weighted(ACTIVITY);
            // A week's visits, in proportion for a longer or shorter period.
            let per_week = r.range(lo, hi) * i64::from(self.opts.days);
            let visits =
                per_week / 7 + i64::from(per_week % 7 != 0 && r.range(0, 6) < per_week % 7);
            let card_trouble = r.weighted(CARD_TROUBLE);
            let plan = r.chance(SUBSCRIBERS).then(|| r.weighted(PLANS));
            let name = (!r.chance(NO_NAME)).then_some(first);
            let timezone_known = !r.chance(NO_TIMEZONE);
            let marketing = [Some(true), Some(false), None][r.index(&CONSENT)];
            self.customers.push(Customer {
                id: format!("c-{}", 10_001 + i),
                name,
                email,
                zone,
                timezone_known,
                marketing,
                platform,
                build,
                os_version,
                update: None,
                visits,
                card_trouble,
                plan,
            });
        }
    }

    fn app_json(&self, c: u32, t: i64) -> String {
        let cu = self.c(c);
        match cu.platform {
            Platform::Web => format!(",\"app\":{{\"platform\":\"web\",\"version\":\"{}\"}}", cu.build),
            Platform::Ios | Platform::Android => format!(
                ",\"app\":{{\"platform\":\"{}\",\"version\":\"{}\"}},\"device\":{{\"os_version\":\"{}\"}}",
                if cu.platform == Platform::Ios { "ios" } else { "android" },
                cu.build_at(t),
                cu.os_version
            ),
        }
    }

    fn app_error(&mut self, t: i64, c: u32, screen: &str, code: &str, extra: &str, tag: Tag) {
        let body = format!(
            "{},\"error\":{{\"screen\":{},\"code\":{}}}{extra}",
            self.app_json(c, t),
            js(screen),
            js(code)
        );
        self.push_c(t, c, "app_error", body, tag);
    }

    /// Whether an iOS build freezes the payment sheet (BUG-1423).
    fn sheet_bug(build: &str) -> bool {
        matches!(build, "4.2.0" | "4.2.1" | "4.2.2")
    }

    fn customer_week(&mut self, c: u32) {
        let mut r = Rng::derive(self.opts.seed, (u64::from(c) << 8) | 1);
        let (platform, build) = (self.c(c).platform, self.c(c).build);
        if platform == Platform::Ios && Self::sheet_bug(build) && r.chance(UPDATES_DURING_WEEK) {
            let t = self.local_time(&mut r, c);
            self.customers[c as usize].update = Some((t, "4.2.3"));
            let body = format!(
                ",\"app\":{{\"platform\":\"ios\",\"version\":\"4.2.3\",\"previous_version\":\"{build}\"}}"
            );
            self.push(t, c, "app_updated", body, Tag::Noise);
        }
        for _ in 0..self.c(c).visits {
            let t = self.local_time(&mut r, c);
            self.visit(&mut r, c, t);
        }
        if r.chance(BACKLOG_ORDER) {
            let placed = self.start - r.range(6 * HOUR, 3 * DAY);
            let id = order_id(&mut r, placed);
            self.shipment(&mut r, c, placed, &id);
        }
        self.renewal(&mut r, c);
        if r.chance(ONE_OFF_FAILURE) {
            let t = self.local_time(&mut r, c);
            let cu = self.c(c);
            let body = format!(
                ",\"payment\":{{\"kind\":\"one_off\",\"reason\":\"card_declined\",\"amount\":{},\"currency\":\"{}\"}}",
                money(cu.price(2500)),
                cu.zone.currency
            );
            self.push_c(t, c, "payment_failed", body, Tag::Story);
        }
    }

    /// One visit: a few pages, maybe a search, a review, an error, a checkout.
    fn visit(&mut self, r: &mut Rng, c: u32, mut t: i64) {
        let platform = self.c(c).platform;
        if platform != Platform::Web && r.chance(OPENS_APP) {
            let body = self.app_json(c, t);
            self.push(t, c, "app_opened", body, Tag::Noise);
            t += r.range(2, 20);
        } else if r.chance(LOGS_IN) {
            let method = r.weighted(LOGIN_METHODS);
            self.push(
                t,
                c,
                "login",
                format!(",\"method\":\"{method}\""),
                Tag::Noise,
            );
            t += r.range(3, 30);
        }
        for _ in 0..r.range(VIEWS.0, VIEWS.1) {
            let (kind, body) = match r.index(&VIEW_MIX) {
                0 => (
                    "page_viewed",
                    format!(",\"page\":\"{}\"", r.weighted(PAGES)),
                ),
                1 => {
                    let q = r.pick(QUERIES);
                    let results = r.range(0, 60);
                    (
                        "search",
                        format!(",\"query\":\"{q}\",\"results\":{results}"),
                    )
                }
                _ => {
                    let (sku, price) = *r.pick(PRODUCTS);
                    let price = money(self.c(c).price(price));
                    (
                        "product_viewed",
                        format!(",\"sku\":\"{sku}\",\"price\":{price}"),
                    )
                }
            };
            self.push(t, c, kind, body, Tag::Noise);
            t += r.range(8, 150);
        }
        if platform == Platform::Android && r.chance(REVIEWS) {
            let cu = self.c(c);
            let known = cu.os_version == "14" && cu.build_at(t) != "4.3.0";
            let other = cu.os_version == "13" && r.chance(UPLOAD_FAILS_ON_13);
            if known || other {
                let tag = if known { Tag::KnownBug } else { Tag::Story };
                for _ in 0..if known { r.range(1, 3) } else { 1 } {
                    self.app_error(t, c, "review_photo", "UPLOAD_EACCES", "", tag);
                    t += r.range(20, 120);
                }
            } else {
                let stars = r.range(3, 5);
                let body = format!(",\"stars\":{stars},\"photo\":true");
                self.push(t, c, "review_submitted", body, Tag::Noise);
            }
            t += r.range(10, 60);
        }
        if platform != Platform::Web && r.chance(OTHER_ERRORS) {
            let code = r.weighted(OTHER_ERROR_CODES);
            let screen = r.weighted(SCREENS);
            self.app_error(t, c, screen, code, "", Tag::Story);
            t += r.range(5, 60);
        }
        if r.chance(CHECKS_OUT) {
            self.checkout(r, c, t);
        } else if r.chance(ADDS_TO_CART) {
            let (sku, _) = *r.pick(PRODUCTS);
            let body = format!(",\"sku\":\"{sku}\",\"quantity\":1");
            self.push(t, c, "cart_item_added", body, Tag::Noise);
        }
    }

    /// A cart: (total in local cents, items).
    fn cart(&self, r: &mut Rng, c: u32) -> (i64, i64) {
        let items = r.weighted(CART_ITEMS);
        let total = (0..items)
            .map(|_| self.c(c).price(r.pick(PRODUCTS).1))
            .sum();
        (total, items)
    }

    fn checkout_started(&mut self, t: i64, c: u32, (total, items): (i64, i64)) {
        let body = format!(
            ",\"cart\":{{\"total\":{},\"items\":{items},\"currency\":\"{}\"}}",
            money(total),
            self.c(c).zone.currency
        );
        self.push_c(t, c, "checkout_started", body, Tag::Story);
    }

    fn payment_failed(&mut self, t: i64, c: u32, cents: i64, reason: &str, tag: Tag) {
        let body = format!(
            ",\"payment\":{{\"kind\":\"checkout\",\"method\":\"card\",\"reason\":\"{reason}\",\"amount\":{},\"currency\":\"{}\"}}",
            money(cents),
            self.c(c).zone.currency
        );
        self.push_c(t, c, "payment_failed", body, tag);
    }

    /// `n` failed payments a minute or two apart; returns the time after.
    fn failures(&mut self, r: &mut Rng, c: u32, mut t: i64, n: u32, cents: i64, tag: Tag) -> i64 {
        let reason = r.weighted(CHECKOUT_DECLINES);
        for _ in 0..n {
            t += r.range(25, 150);
            self.payment_failed(t, c, cents, reason, tag);
        }
        t
    }

    fn order(&mut self, r: &mut Rng, t: i64, c: u32, cents: i64) {
        let id = order_id(r, t);
        let body = format!(
            ",\"order_id\":\"{id}\",\"total\":{},\"currency\":\"{}\"",
            money(cents),
            self.c(c).zone.currency
        );
        self.push(t, c, "order_placed", body, Tag::Order);
        self.shipment(r, c, t, &id);
    }

    fn ticket(&mut self, r: &mut Rng, t: i64, c: u32, topic: &str) {
        let channel = r.weighted(TICKET_CHANNELS);
        let body = format!(
            ",\"ticket_id\":\"T-{}\",\"channel\":\"{channel}\",\"topic\":\"{topic}\"",
            r.range(200_000, 299_999)
        );
        self.push(t, c, "support_ticket_opened", body, Tag::Story);
    }

    /// From `checkout_started` to an order, a ticket, or nothing.
    fn checkout(&mut self, r: &mut Rng, c: u32, mut t: i64) {
        let (sku, _) = *r.pick(PRODUCTS);
        let body = format!(",\"sku\":\"{sku}\",\"quantity\":1");
        self.push(t, c, "cart_item_added", body, Tag::Noise);
        t += r.range(20, 240);
        let mut cart = self.cart(r, c);
        self.checkout_started(t, c, cart);
        let (platform, build) = (self.c(c).platform, self.c(c).build_at(t));
        if platform == Platform::Ios
            && (Self::sheet_bug(build) && r.chance(SHEET_FREEZES)
                || r.chance(SHEET_TIMEOUT_ELSEWHERE))
        {
            let tag = if Self::sheet_bug(build) {
                Tag::KnownBug
            } else {
                Tag::Story
            };
            for _ in 0..r.range(1, 3) {
                t += r.range(20, 90);
                self.app_error(t, c, "payment", "SHEET_TIMEOUT", "", tag);
            }
            if r.chance(GIVES_UP_AFTER_FREEZE) {
                return;
            }
        }
        if r.chance(GIFT_CARD_REJECTED) {
            t += r.range(15, 60);
            let old = r.chance(OLD_GIFT_CARD);
            let extra = format!(",\"giftcard\":{{\"issued_before_2024\":{old}}}");
            let tag = if old { Tag::KnownBug } else { Tag::Story };
            self.app_error(t, c, "checkout", "GIFTCARD_CHECKSUM", &extra, tag);
        }
        match r.weighted(ENDINGS) {
            Ending::Orders => {
                if r.chance(self.c(c).card_trouble) {
                    let n = r.weighted(FAILS_BEFORE_ORDER);
                    let tag = if n == 2 { Tag::PaymentPair } else { Tag::Story };
                    t = self.failures(r, c, t, n, cart.0, tag);
                }
                t += r.range(30, 420);
                self.order(r, t, c, cart.0);
            }
            Ending::OrdersLater => {
                t += r.range(31 * MIN, 3 * HOUR);
                self.order(r, t, c, cart.0);
            }
            Ending::AsksSupport => {
                t += r.range(2 * MIN, 25 * MIN);
                let topic = r.weighted(TICKET_TOPICS);
                self.ticket(r, t, c, topic);
                if r.chance(500) {
                    t += r.range(5 * MIN, 40 * MIN);
                    self.order(r, t, c, cart.0);
                }
            }
            Ending::StartsAgain => {
                t += r.range(5 * MIN, 25 * MIN);
                cart.0 += self.c(c).price(r.pick(PRODUCTS).1);
                cart.1 += 1;
                self.checkout_started(t, c, cart);
                if r.chance(700) {
                    t += r.range(MIN, 8 * MIN);
                    self.order(r, t, c, cart.0);
                }
            }
            Ending::StuckAtTill => {
                let orders = r.chance(ORDERS_AFTER_TILL);
                let again = !orders && r.chance(TRIES_AGAIN);
                let n = r.weighted(FAILS_AT_TILL);
                let tag = if n == 2 && !again {
                    Tag::PaymentPair
                } else {
                    Tag::Story
                };
                t = self.failures(r, c, t, n, cart.0, tag);
                if orders {
                    t += r.range(2 * MIN, 6 * MIN);
                    self.order(r, t, c, cart.0);
                } else if again {
                    t += r.range(20 * MIN, 2 * HOUR);
                    self.checkout_started(t, c, cart);
                    let n = r.range(2, 4) as u32;
                    t = self.failures(r, c, t, n, cart.0, Tag::Story);
                    if r.chance(500) {
                        t += r.range(2 * MIN, 6 * MIN);
                        self.order(r, t, c, cart.0);
                    }
                }
            }
            Ending::SlowFailures => {
                let reason = r.weighted(CHECKOUT_DECLINES);
                for _ in 0..3 {
                    t += r.range(5 * MIN + 30, 9 * MIN);
                    self.payment_failed(t, c, cart.0, reason, Tag::Story);
                }
            }
            Ending::Leaves => {}
        }
    }

    /// The parcel of an order: dispatch, maybe a carrier delay, then a
    /// delivery scan (on time, a little late, late), none, or a cancellation.
    fn shipment(&mut self, r: &mut Rng, c: u32, ordered: i64, order_id: &str) {
        // The warehouse dispatches Monday to Saturday, 06:00–18:00 UTC.
        let mut dispatch = ordered + r.range(3 * HOUR, 20 * HOUR);
        loop {
            let day = dispatch.div_euclid(DAY);
            match dispatch.rem_euclid(DAY) {
                s if weekday(day) == 6 || s >= 18 * HOUR => {
                    dispatch = (day + 1) * DAY + 6 * HOUR + r.range(0, 2 * HOUR);
                }
                s if s < 6 * HOUR => dispatch = day * DAY + 6 * HOUR + r.range(0, 2 * HOUR),
                _ => break,
            }
        }
        let zone = self.c(c).zone;
        let carrier = *r.pick(zone.carriers);
        // Promised by 20:00 local time on the delivery day, never a Sunday.
        let offset = zone.offset_minutes * MIN;
        let mut day =
            (dispatch + offset).div_euclid(DAY) + r.range(zone.transit_days.0, zone.transit_days.1);
        if weekday(day) == 6 {
            day += 1;
        }
        let promised = day * DAY + 20 * HOUR - offset;
        self.shipments += 1;
        let id = format!("SHP-{}", 880_000 + self.shipments);
        let promise = if r.chance(NO_PROMISE) {
            String::new()
        } else {
            format!(",\"promised_delivery_at\":\"{}\"", rfc3339(promised))
        };
        let body = format!(
            ",\"order_id\":\"{order_id}\",\"shipment\":{{\"id\":\"{id}\",\"carrier\":\"{carrier}\"{promise}}}"
        );
        self.push_c(dispatch, c, "shipment_dispatched", body, Tag::Story);
        let scan = format!(",\"order_id\":\"{order_id}\",\"shipment\":{{\"id\":\"{id}\"}}");
        let transit = (promised - dispatch).max(6 * HOUR);
        let fate = r.weighted(FATES);
        let delivered = match fate {
            Fate::OnTime => {
                let t = dispatch + transit / 3 + r.range(0, transit * 2 / 3 - 2 * HOUR);
                Some(self.by_day(c, t, r).min(promised - 30 * MIN))
            }
            Fate::WithinGrace => Some(promised + r.range(5 * MIN, 110 * MIN)),
            Fate::Late => {
                if r.chance(ASKS_WHERE) {
                    let asked = self.by_day(c, promised + r.range(HOUR, 20 * HOUR), r);
                    self.ticket(r, asked, c, "where_is_my_order");
                }
                Some(self.by_day(c, promised + r.range(3 * HOUR, 2 * DAY), r))
            }
            Fate::CarrierDelay => {
                let hours = r.weighted(DELAY_HOURS);
                let reported = dispatch + r.range(2 * HOUR, transit.max(3 * HOUR));
                let eta = promised + hours * HOUR;
                let mut body = format!(
                    ",\"order_id\":\"{order_id}\",\"carrier\":\"{carrier}\",\"shipment\":{{\"id\":\"{id}\"}},\"delay_hours\":{hours}"
                );
                if !r.chance(DELAY_WITHOUT_ETA) {
                    let _ = write!(body, ",\"new_eta\":\"{}\"", rfc3339(eta));
                }
                let tag = if hours >= 24 {
                    Tag::LongDelay
                } else {
                    Tag::Story
                };
                if r.chance(DELAY_SENT_TWICE) {
                    let again = reported + r.range(3 * MIN, 20 * MIN);
                    self.push_c(again, c, "carrier_delay_reported", body.clone(), tag);
                }
                self.push_c(reported, c, "carrier_delay_reported", body, tag);
                Some(self.by_day(c, eta + r.range(-3 * HOUR, 3 * HOUR), r))
            }
            Fate::NeverScanned => None,
            Fate::Cancelled | Fate::CancelledOrderOnly => {
                let t = dispatch + r.range(HOUR, transit.max(2 * HOUR));
                let shipment = match fate {
                    Fate::Cancelled => format!(",\"shipment\":{{\"id\":\"{id}\"}}"),
                    _ => String::new(),
                };
                let body = format!(
                    ",\"order_id\":\"{order_id}\"{shipment},\"reason\":\"customer_request\""
                );
                self.push(t, c, "order_cancelled", body, Tag::Story);
                None
            }
        };
        if let Some(t) = delivered {
            self.push(t, c, "shipment_delivered", scan, Tag::Story);
        }
    }

    /// A subscription renewal, when it falls in the period: the billing
    /// run charges at night (UTC); a declined card is tried again the next
    /// night, twice at most.
    fn renewal(&mut self, r: &mut Rng, c: u32) {
        let Some((plan, price)) = self.c(c).plan else {
            return;
        };
        // Monthly: one renewal day in thirty.
        let day = r.range(0, 29);
        if day >= i64::from(self.opts.days) {
            return;
        }
        let paid = format!(
            ",\"plan\":\"{plan}\",\"amount\":{},\"currency\":\"{}\"",
            money(self.c(c).price(price)),
            self.c(c).zone.currency
        );
        let mut t = self.start + day * DAY + 2 * HOUR + r.range(0, 150 * MIN);
        for attempt in 0..3 {
            if !r.chance(if attempt == 0 {
                RENEWAL_FAILS
            } else {
                RETRY_FAILS
            }) {
                self.push(t, c, "subscription_renewed", paid, Tag::Noise);
                return;
            }
            let reason = r.weighted(RENEWAL_DECLINES);
            let body = format!(
                ",\"payment\":{{\"kind\":\"renewal\",\"reason\":\"{reason}\"{}}}",
                paid
            );
            self.push_c(t, c, "payment_failed", body, Tag::Story);
            if r.chance(FIXES_CARD) {
                let fixed = t + r.range(4 * HOUR, 16 * HOUR);
                let body = ",\"method\":\"card\"".to_string();
                self.push(fixed, c, "payment_method_updated", body, Tag::Noise);
                self.push(
                    fixed + r.range(20, 120),
                    c,
                    "subscription_renewed",
                    paid,
                    Tag::Noise,
                );
                return;
            }
            t += DAY + r.range(-20 * MIN, 20 * MIN);
        }
    }

    fn render(&self, e: &Ev, id: &str, broken: Option<Broken>) -> String {
        let c = self.c(e.customer);
        let mut m = Vec::with_capacity(6);
        if broken != Some(Broken::NoType) {
            m.push(format!("\"type\":\"{}\"", e.kind));
        }
        m.push(format!("\"event_id\":\"{id}\""));
        if broken != Some(Broken::NoCustomer) {
            m.push(format!("\"customer_id\":\"{}\"", c.id));
        }
        let ts = rfc3339(e.t);
        m.push(match broken {
            Some(Broken::TimeWithoutZone) => format!("\"ts\":\"{} {}\"", &ts[..10], &ts[11..19]),
            Some(Broken::DayFirstTime) => format!(
                "\"ts\":\"{}/{}/{} {}\"",
                &ts[8..10],
                &ts[5..7],
                &ts[..4],
                &ts[11..16]
            ),
            _ => format!("\"ts\":\"{ts}\""),
        });
        if e.with_customer {
            m.push(format!("\"customer\":{}", c.json()));
        }
        let mut line = format!("{{{}{}}}", m.join(","), e.body);
        if broken == Some(Broken::Truncated) {
            let mut cut = line.len() * 3 / 5;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        line
    }
}

/// `n` distinct indices from `pool` (fewer if it is smaller).
fn choose(r: &mut Rng, pool: &[usize], n: usize, taken: &mut HashSet<usize>) -> Vec<usize> {
    let mut out = Vec::new();
    let free = pool.iter().filter(|i| !taken.contains(i)).count();
    while out.len() < n.min(free) {
        let i = *r.pick(pool);
        if taken.insert(i) {
            out.push(i);
        }
    }
    out
}

/// Builds the sample.
pub fn generate(opts: &Options) -> Generated {
    let mut w = World::new(opts);
    w.make_customers();
    for c in 0..opts.customers {
        w.customer_week(c);
    }
    w.events.sort_by_key(|e| (e.t, e.seq));

    // Broken and redelivered lines, chosen with a generator of their own.
    let mut r = Rng::derive(opts.seed, u64::MAX);
    let with = |tag: Tag| -> Vec<usize> {
        (0..w.events.len())
            .filter(|&i| w.events[i].tag == tag)
            .collect()
    };
    let mut taken = HashSet::new();
    let mut broken = vec![None; w.events.len()];
    for (i, kind) in choose(&mut r, &with(Tag::Noise), BROKEN.len(), &mut taken)
        .into_iter()
        .zip(BROKEN)
    {
        broken[i] = Some(kind);
    }
    let mut twice = vec![false; w.events.len()];
    for (tag, n) in REDELIVERED {
        for i in choose(&mut r, &with(tag), n, &mut taken) {
            twice[i] = true;
        }
    }

    let mut jsonl = String::with_capacity(w.events.len() * 160);
    let mut lines = 0;
    for (i, e) in w.events.iter().enumerate() {
        let line = w.render(e, &format!("ev-{:07}", i + 1), broken[i]);
        for _ in 0..if twice[i] { 2 } else { 1 } {
            jsonl.push_str(&line);
            jsonl.push('\n');
            lines += 1;
        }
    }
    Generated {
        jsonl,
        lines,
        invalid: broken.iter().flatten().count(),
        redelivered: twice.iter().filter(|&&t| t).count(),
    }
}

// -------------------------------------------------------------- command line

const USAGE: &str = "usage: cargo run --example sample_week -- --out FILE [--seed N] [--customers N] [--days N] [--start YYYY-MM-DD]
  --out FILE        where to write; gzip-compressed when FILE ends in .gz
  --seed N          another week of the same shape (default 20261116)
  --customers N     how many customers (default 3000: about 50,000 events a week)
  --days N          how many days (default 7)
  --start DATE      the first day, from UTC midnight (default 2026-11-16, a Monday)";

fn parse_args(args: &[String]) -> Result<(Options, PathBuf), String> {
    let mut opts = Options::default();
    let mut out = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u32>()
                .map_err(|_| format!("{flag} {v:?}: give a whole number"))
        };
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value?)),
            "--seed" => {
                let v = value?;
                opts.seed = v
                    .parse()
                    .map_err(|_| format!("--seed {v:?}: give a whole number"))?;
            }
            "--customers" => opts.customers = number(value?)?,
            "--days" => opts.days = number(value?)?.max(1),
            "--start" => {
                let v = value?;
                let bad = || format!("--start {v:?}: write a date as YYYY-MM-DD");
                let parts: Vec<&str> = v.split('-').collect();
                let [y, m, d] = parts.as_slice() else {
                    return Err(bad());
                };
                let y: i64 = y.parse().map_err(|_| bad())?;
                let m: u32 = m.parse().map_err(|_| bad())?;
                let d: u32 = d.parse().map_err(|_| bad())?;
                if !(1..=12).contains(&m) || civil_from_days(days_from_civil(y, m, d)) != (y, m, d)
                {
                    return Err(bad());
                }
                opts.start = (y, m, d);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok((opts, out.ok_or("--out is required")?))
}

/// Writes `text` to `out`, gzip-compressed when its name ends in `.gz`;
/// returns the bytes written.
fn write(out: &std::path::Path, text: &str) -> std::io::Result<usize> {
    use std::io::Write;
    let bytes = if out.extension().is_some_and(|e| e == "gz") {
        // No time stamp or file name in the header: the same text gives the same file.
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        gz.write_all(text.as_bytes())?;
        gz.finish()?
    } else {
        text.as_bytes().to_vec()
    };
    std::fs::write(out, &bytes)?;
    Ok(bytes.len())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (opts, out) = match parse_args(&args) {
        Ok(x) => x,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let began = std::time::Instant::now();
    let g = generate(&opts);
    let generated = began.elapsed();
    let size = match write(&out, &g.jsonl) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    };
    let start = days_from_civil(opts.start.0, opts.start.1, opts.start.2) * DAY;
    println!(
        "{}: {} lines ({} broken, {} events delivered twice), {} customers, {} to {}; \
         {} bytes of JSONL, {size} bytes written; generated in {} ms, written in {} ms",
        out.display(),
        g.lines,
        g.invalid,
        g.redelivered,
        opts.customers,
        rfc3339(start),
        rfc3339(start + i64::from(opts.days) * DAY),
        g.jsonl.len(),
        generated.as_millis(),
        (began.elapsed() - generated).as_millis()
    );
    ExitCode::SUCCESS
}
