//! Events: the typed view of one behavioral record.
//!
//! Each company's pipeline has its own schema, so the type, customer, time
//! and id fields are found through configurable dotted paths. Decoding is
//! pure: bytes in, `Event` or `InvalidEvent` out. It never logs payloads;
//! the caller decides what to count and where to dead-letter.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

mod scan;

/// A dotted path into a JSON object, parsed once (`customer.id` → ["customer", "id"]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath(Arc<[String]>);

impl FieldPath {
    pub fn parse(s: &str) -> Result<FieldPath, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the field path is empty: write a field name or a dotted path such as \"customer.id\"".into());
        }
        let parts: Vec<String> = s.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return Err("the field path has an empty segment: write segments separated by single dots, e.g. \"customer.id\"".into());
        }
        Ok(FieldPath(parts.into()))
    }

    /// The value at this path, if every segment exists.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut v = root;
        for seg in self.0.iter() {
            v = match v {
                Value::Object(m) => member(m, seg)?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }

    /// The value at this path as text: strings as-is, numbers and booleans
    /// printed; null, objects and arrays are not identifiers.
    pub fn get_text(&self, root: &Value) -> Option<String> {
        self.get(root).and_then(scalar_text)
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// The member `key` of a JSON object. Event objects are small: a scan
/// that compares lengths first beats the map's ordered search, each step
/// of which calls `memcmp`. (Conditions look fields up many times per
/// event; this was 7% of the engine benchmark's time.)
#[inline]
pub(crate) fn member<'a>(m: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    if m.len() > 16 {
        return m.get(key);
    }
    m.iter().find(|(k, _)| same_text(k, key)).map(|(_, v)| v)
}

/// `a == b`, without a call to `memcmp` for short texts (field names,
/// event types), where the call costs more than the comparison: up to 16
/// bytes are compared as two overlapping words.
#[inline(always)]
pub(crate) fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// A scalar as an identifier: strings as-is (non-empty), numbers and
/// booleans printed; null, objects and arrays are not identifiers.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The fields every event has, checked in this order.
struct Envelope {
    kind: String,
    customer: String,
    time: Millis,
    id: Option<String>,
}

/// Where the type, customer, time and id of an event are found.
#[derive(Debug, Clone)]
pub struct EventSchema {
    pub kind: FieldPath,
    pub customer: FieldPath,
    pub time: FieldPath,
    pub id: Option<FieldPath>,
}

impl EventSchema {
    /// The fields the CX tools assume without a daemon config: `type`,
    /// `customer_id`, `ts` and `event_id` (the config's defaults, plus the id).
    pub fn conventional() -> EventSchema {
        let p = |s: &str| FieldPath::parse(s).expect("built-in paths are valid");
        EventSchema {
            kind: p("type"),
            customer: p("customer_id"),
            time: p("ts"),
            id: Some(p("event_id")),
        }
    }
}

/// Event time in milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// The wall clock, in epoch milliseconds: the one place forewarn reads it
/// (the engine never does; it is handed `Clock::Wall(now_millis())`).
pub fn now_millis() -> Millis {
    jiff::Timestamp::now().as_millisecond()
}

#[derive(Debug, Clone)]
pub struct Event {
    /// The event type, e.g. `checkout_started`.
    pub kind: String,
    pub customer: String,
    /// Event time: drives every rule.
    pub time: Millis,
    /// Optional producer-assigned id; de-duplicates redelivered events.
    pub id: Option<String>,
    /// The whole payload, or only the members the rules read (see
    /// [`EventSchema::decode_lazy`]); then `raw` keeps the record.
    pub payload: Value,
    pub raw: Option<Arc<[u8]>>,
}

impl Event {
    /// This event with its whole payload (parsed now if it was decoded
    /// partially): what templates and notification ids see.
    pub fn complete(self: &Arc<Event>) -> Arc<Event> {
        match &self.raw {
            None => Arc::clone(self),
            Some(_) => Arc::new(Event {
                kind: self.kind.clone(),
                customer: self.customer.clone(),
                time: self.time,
                id: self.id.clone(),
                payload: self.full_payload().into_owned(),
                raw: None,
            }),
        }
    }

    /// The whole payload, parsed now if it was decoded partially.
    pub fn full_payload(&self) -> Cow<'_, Value> {
        match &self.raw {
            None => Cow::Borrowed(&self.payload),
            Some(raw) => {
                Cow::Owned(serde_json::from_slice(raw).unwrap_or_else(|_| self.payload.clone()))
            }
        }
    }
}

/// How much of an event's payload the rules need, by event type.
#[derive(Debug, Clone, Copy)]
pub enum PayloadNeed<'a> {
    /// No rule names this type.
    Nothing,
    /// These fields (their first-level members are kept whole).
    Fields(&'a [FieldPath]),
    /// All of it.
    Full,
}

/// Why a record is not a usable event. `reason()` is a bounded metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("the record is not valid JSON ({0})")]
    NotJson(String),
    #[error("the record is JSON but not an object")]
    NotObject,
    #[error("the record has no usable `{field}` field ({role})")]
    MissingField { field: String, role: &'static str },
    #[error("the `{field}` field is not an RFC 3339 timestamp or integer epoch milliseconds")]
    BadTime { field: String },
}

impl InvalidEvent {
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidEvent::NotJson(_) => "not_json",
            InvalidEvent::NotObject => "not_object",
            InvalidEvent::MissingField { role: "type", .. } => "missing_type",
            InvalidEvent::MissingField {
                role: "customer", ..
            } => "missing_customer",
            InvalidEvent::MissingField { .. } => "missing_time",
            InvalidEvent::BadTime { .. } => "bad_time",
        }
    }
}

impl EventSchema {
    /// Decodes only what every event needs (type, customer, time, id) and
    /// parses the payload only as far as `need(type)` says: most events
    /// on a busy topic concern no rule, and building their JSON tree is the
    /// largest cost of reading them. The record is still fully validated.
    pub fn decode_lazy<'n>(
        &self,
        bytes: &[u8],
        need: impl FnOnce(&str) -> PayloadNeed<'n>,
    ) -> Result<Event, InvalidEvent> {
        let mut top = scan::Members::default();
        let Some(()) = scan::object(bytes, &mut top) else {
            // Not an object, not JSON, or what the scanner leaves to
            // serde_json: the full parse decides (and names the problem).
            return self.decode(bytes);
        };
        let env = self.envelope(|path| raw_field(&top, path))?;
        let (payload, raw) = match need(&env.kind) {
            PayloadNeed::Full => return self.decode(bytes),
            PayloadNeed::Nothing => (Value::Null, None),
            PayloadNeed::Fields(paths) => {
                // Whole first-level members: exact for any path below them.
                let mut members = serde_json::Map::new();
                let mut last: Option<&str> = None;
                for p in paths {
                    let Some(first) = p.segments().first() else {
                        continue;
                    };
                    // Paths under one member are mostly neighbours (the
                    // engine sorts them), and each member is built once
                    // for them; a member met again is only built again.
                    if last.is_some_and(|l| same_text(l, first)) {
                        continue;
                    }
                    last = Some(first);
                    if let Some(v) = top.get(first.as_str()).and_then(scan::value) {
                        members.insert(first.clone(), v);
                    }
                }
                (Value::Object(members), Some(Arc::from(bytes)))
            }
        };
        Ok(env.into_event(payload, raw))
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<Event, InvalidEvent> {
        let payload: Value = serde_json::from_slice(bytes).map_err(|e| {
            // serde_json's message carries line/column, never the payload itself.
            InvalidEvent::NotJson(e.to_string())
        })?;
        self.from_value(payload)
    }

    pub fn from_value(&self, payload: Value) -> Result<Event, InvalidEvent> {
        if !payload.is_object() {
            return Err(InvalidEvent::NotObject);
        }
        let env = self.envelope(|p| p.get(&payload).map(Field::of_value))?;
        Ok(env.into_event(payload, None))
    }

    /// Type, customer, time and id through `field`: a lookup on the parsed
    /// payload, or on the raw record (`decode_lazy`). One place for the
    /// checks and their errors, whichever way the event was read.
    fn envelope<'v>(
        &self,
        field: impl Fn(&FieldPath) -> Option<Field<'v>>,
    ) -> Result<Envelope, InvalidEvent> {
        let missing = |path: &FieldPath, role| InvalidEvent::MissingField {
            field: path.to_string(),
            role,
        };
        let kind = match field(&self.kind) {
            Some(Field::Text(s)) if !s.is_empty() => s.into_owned(),
            _ => return Err(missing(&self.kind, "type")),
        };
        let customer = field(&self.customer)
            .and_then(Field::into_text)
            .ok_or_else(|| missing(&self.customer, "customer"))?;
        let time = match field(&self.time) {
            None | Some(Field::Null) => return Err(missing(&self.time, "time")),
            Some(f) => f.time().ok_or_else(|| InvalidEvent::BadTime {
                field: self.time.to_string(),
            })?,
        };
        let id = self.id.as_ref().and_then(&field).and_then(Field::into_text);
        Ok(Envelope {
            kind,
            customer,
            time,
            id,
        })
    }
}

/// An envelope field as the checks see it, borrowed where the record allows.
enum Field<'a> {
    Text(Cow<'a, str>),
    /// Its text as serde_json prints it, and its value when an integer.
    Number(Cow<'a, str>, Option<i64>),
    Bool(bool),
    Null,
    /// An object or an array.
    Other,
}

impl<'a> Field<'a> {
    fn of_value(v: &'a Value) -> Field<'a> {
        match v {
            Value::String(s) => Field::Text(Cow::Borrowed(s)),
            Value::Number(n) => Field::Number(Cow::Owned(n.to_string()), n.as_i64()),
            Value::Bool(b) => Field::Bool(*b),
            Value::Null => Field::Null,
            _ => Field::Other,
        }
    }

    fn of_owned(v: Value) -> Field<'a> {
        match v {
            Value::String(s) => Field::Text(Cow::Owned(s)),
            other => match Field::of_value(&other) {
                Field::Number(text, i) => Field::Number(Cow::Owned(text.into_owned()), i),
                Field::Bool(b) => Field::Bool(b),
                Field::Null => Field::Null,
                _ => Field::Other,
            },
        }
    }

    /// A value's raw JSON text (valid, from the scanner), read without
    /// building a tree when it is a plain string or integer.
    fn of_raw(raw: &'a str) -> Option<Field<'a>> {
        match raw.as_bytes().first()? {
            b'"' => Some(match scan::plain_str(raw) {
                Some(s) => Field::Text(Cow::Borrowed(s)),
                None => Field::Text(Cow::Owned(serde_json::from_str(raw).ok()?)),
            }),
            b't' => Some(Field::Bool(true)),
            b'f' => Some(Field::Bool(false)),
            b'n' => Some(Field::Null),
            b'{' | b'[' => Some(Field::Other),
            _ if scan::plain_integer(raw) => {
                Some(Field::Number(Cow::Borrowed(raw), raw.parse().ok()))
            }
            _ => serde_json::from_str(raw).ok().map(Field::of_owned),
        }
    }

    /// As an identifier: see [`scalar_text`].
    fn into_text(self) -> Option<String> {
        match self {
            Field::Text(s) if !s.is_empty() => Some(s.into_owned()),
            Field::Number(n, _) => Some(n.into_owned()),
            Field::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// As an event time: see [`parse_time`].
    fn time(&self) -> Option<Millis> {
        match self {
            Field::Text(s) => parse_timestamp(s),
            Field::Number(_, i) => *i,
            _ => None,
        }
    }
}

/// The field at `path` of a scanned record: nested objects are scanned in
/// turn; an array on the way is parsed and walked.
fn raw_field<'a>(top: &scan::Members<'a>, path: &FieldPath) -> Option<Field<'a>> {
    let (first, rest) = path.segments().split_first()?;
    let mut raw = top.get(first.as_str())?;
    for (i, seg) in rest.iter().enumerate() {
        if raw.starts_with('{') {
            raw = scan::nested_get(raw, seg.as_str())?;
        } else {
            let v: Value = serde_json::from_str(raw).ok()?;
            let tail = FieldPath(rest[i..].to_vec().into());
            return tail.get(&v).cloned().map(Field::of_owned);
        }
    }
    Field::of_raw(raw)
}

impl Envelope {
    fn into_event(self, payload: Value, raw: Option<Arc<[u8]>>) -> Event {
        Event {
            kind: self.kind,
            customer: self.customer,
            time: self.time,
            id: self.id,
            payload,
            raw,
        }
    }
}

/// RFC 3339 text, or an integer number of epoch milliseconds.
pub fn parse_time(v: &Value) -> Option<Millis> {
    match v {
        Value::String(s) => parse_timestamp(s),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// RFC 3339 text as epoch milliseconds.
fn parse_timestamp(s: &str) -> Option<Millis> {
    utc_fast(s.as_bytes()).or_else(|| {
        s.parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_millisecond())
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` from 1970 on, the form most
/// producers write, read without a general parser (every event has a
/// time). Anything else, such as an offset or a leap second, is left to
/// jiff, which reads this form the same.
fn utc_fast(b: &[u8]) -> Option<Millis> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        let from = i + 1;
        i = from;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == from || i - from > 9 {
            return None;
        }
        // Milliseconds: the first three digits (later ones truncate, as
        // jiff's as_millisecond does for times after 1970).
        millis = (0..3).fold(0i64, |n, k| {
            let d = if from + k < i {
                i64::from(b[from + k] - b'0')
            } else {
                0
            };
            n * 10 + d
        });
    }
    if b.get(i) != Some(&b'Z') || i + 1 != b.len() {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if year < 1970 || day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1_000 + millis)
}

pub fn format_time(ms: Millis) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.to_string(),
        Err(_) => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> EventSchema {
        EventSchema {
            kind: FieldPath::parse("type").unwrap(),
            customer: FieldPath::parse("customer.id").unwrap(),
            time: FieldPath::parse("ts").unwrap(),
            id: Some(FieldPath::parse("event_id").unwrap()),
        }
    }

    #[test]
    fn decodes_nested_paths_and_both_time_forms() {
        let e = schema()
            .decode(br#"{"type":"order_placed","customer":{"id":42},"ts":"2026-11-24T10:00:00Z","event_id":"e1"}"#)
            .unwrap();
        assert_eq!(e.kind, "order_placed");
        assert_eq!(e.customer, "42");
        assert_eq!(e.time, 1_795_514_400_000);
        assert_eq!(e.id.as_deref(), Some("e1"));
        let e = schema()
            .decode(br#"{"type":"x","customer":{"id":"c1"},"ts":1795514400000}"#)
            .unwrap();
        assert_eq!(e.time, 1_795_514_400_000);
        assert_eq!(e.id, None);
        let e = schema()
            .decode(br#"{"type":"x","customer":{"id":"c1"},"ts":"2026-11-24T11:00:00+01:00"}"#)
            .unwrap();
        assert_eq!(e.time, 1_795_514_400_000);
    }

    #[test]
    fn classifies_invalid_records() {
        let s = schema();
        let cases: Vec<(&[u8], &str)> = vec![
            (b"not json", "not_json"),
            (b"[1,2]", "not_object"),
            (br#"{"customer":{"id":"c"},"ts":1}"#, "missing_type"),
            (
                br#"{"type":"","customer":{"id":"c"},"ts":1}"#,
                "missing_type",
            ),
            (br#"{"type":"x","ts":1}"#, "missing_customer"),
            (
                br#"{"type":"x","customer":{"id":null},"ts":1}"#,
                "missing_customer",
            ),
            (br#"{"type":"x","customer":{"id":"c"}}"#, "missing_time"),
            (
                br#"{"type":"x","customer":{"id":"c"},"ts":"yesterday"}"#,
                "bad_time",
            ),
            (
                br#"{"type":"x","customer":{"id":"c"},"ts":1.5}"#,
                "bad_time",
            ),
        ];
        for (bytes, reason) in cases {
            let err = s.decode(bytes).unwrap_err();
            assert_eq!(err.reason(), reason, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn invalid_event_messages_never_echo_the_payload() {
        let err = schema()
            .decode(br#"{"type":"x","customer":{"id":"c"},"ts":"secret@example.com"}"#)
            .unwrap_err();
        assert!(!err.to_string().contains("secret@example.com"));
        let err = schema()
            .decode(b"{\"email\": \"secret@example.com\"")
            .unwrap_err();
        assert!(!err.to_string().contains("secret@example.com"), "{err}");
    }

    #[test]
    fn lazy_decode_agrees_with_full_decode() {
        let s = schema();
        let records: Vec<&[u8]> = vec![
            br#"{"type":"page_view","customer":{"id":42},"ts":"2026-11-24T10:00:00Z","event_id":"e1","page":"/"}"#,
            br#"{"type":"page_view","customer":{"id":"c1"},"ts":1795514400000,"deep":{"a":[1,{"b":2}]}}"#,
            br#"{"type":"page_view","customer":{"id":"c1"},"ts":"yesterday"}"#,
            br#"{"type":"page_view","ts":1}"#,
            br#"{"type":"page_view","customer":{"id":"c1"}}"#,
            br#"{"customer":{"id":"c1"},"ts":1}"#,
            br#"{"type":"page_view","customer":{"id":"c1"},"ts":1,"broken":[1,2"#,
            br#"{"type":"page_view","customer":{"id":"c1"},"ts":1}"#,
            br#"{"type":"page\u005fview","customer":{"id":1.50},"ts":-0,"event_id":true}"#,
            br#"{"type":"x","customer":{"id":"-0"},"ts":1e3,"event_id":12345678901234567890}"#,
            br#"{"type":"x","customer":{"id":"a\"b"},"ts":"2026-11-24T10:00:00\u005a"}"#,
            br#"{"type":"x","customer":{"id":[1]},"ts":1}"#,
            br#"{"type":7,"customer":{"id":"c"},"ts":1}"#,
            br#"{"type":"x","customer":{"id":"c"},"ts":false}"#,
            br#"{"type":"x","customer":{"id":"c"},"ts":null}"#,
            br#"{"type":"x","customer":{"id":"c"},"ts":1,"n":1e999}"#,
            b"[1]",
            b"nope",
        ];
        for r in records {
            let full = s.decode(r);
            let lazy = s.decode_lazy(r, |_| PayloadNeed::Nothing);
            match (&full, &lazy) {
                (Ok(f), Ok(l)) => {
                    assert_eq!(
                        (&f.kind, &f.customer, f.time, &f.id),
                        (&l.kind, &l.customer, l.time, &l.id)
                    );
                    assert_eq!(
                        l.payload,
                        Value::Null,
                        "payload skipped for an event no rule wants"
                    );
                }
                (Err(f), Err(l)) => {
                    assert_eq!(f.reason(), l.reason(), "{}", String::from_utf8_lossy(r))
                }
                _ => panic!(
                    "{}: full {full:?} vs lazy {lazy:?}",
                    String::from_utf8_lossy(r)
                ),
            }
            if let Ok(e) = s.decode_lazy(r, |_| PayloadNeed::Full) {
                assert_eq!(Some(e.payload), full.ok().map(|f| f.payload));
            }
        }
        // A key with escapes goes to serde_json, which reads it the same.
        let e = s
            .decode_lazy(br#"{"ty\u0070e":"x","customer":{"id":"c"},"ts":1}"#, |_| {
                PayloadNeed::Nothing
            })
            .unwrap();
        assert_eq!(
            (e.kind.as_str(), e.customer.as_str(), e.time),
            ("x", "c", 1)
        );
        let p = FieldPath::parse("items.0.sku").unwrap();
        let nested = EventSchema {
            customer: p,
            ..schema()
        };
        let e = nested
            .decode_lazy(br#"{"type":"x","items":[{"sku":"A1"}],"ts":1}"#, |_| {
                PayloadNeed::Nothing
            })
            .unwrap();
        assert_eq!(e.customer, "A1");
        let cart = [FieldPath::parse("cart.total").unwrap()];
        let e = schema()
            .decode_lazy(
                br#"{"type":"x","customer":{"id":"c"},"ts":1,"cart":{"total":5,"items":[1]},"big":"zzz"}"#,
                |_| PayloadNeed::Fields(&cart),
            )
            .unwrap();
        assert_eq!(
            e.payload,
            serde_json::json!({"cart": {"total": 5, "items": [1]}})
        );
        let e = Arc::new(e);
        assert_eq!(
            e.complete().payload["big"],
            "zzz",
            "the whole payload on demand"
        );
    }

    proptest::proptest! {
        /// `same_text` is `==`, at every length around its word sizes,
        /// for equal texts and texts differing in any one byte.
        #[test]
        fn same_text_is_equality(
            a in "[a-c_é]{0,20}",
            flip in proptest::option::of(0usize..40),
        ) {
            let mut b = a.clone().into_bytes();
            if let Some(at) = flip.filter(|_| !b.is_empty()) {
                let at = at % b.len();
                b[at] = if b[at] == b'a' { b'b' } else { b'a' };
            }
            if let Ok(b) = String::from_utf8(b) {
                proptest::prop_assert_eq!(same_text(&a, &b), a == b);
                let shorter = &a[..a.char_indices().last().map_or(0, |(i, _)| i)];
                proptest::prop_assert_eq!(same_text(&a, shorter), a == shorter);
            }
        }
    }

    proptest::proptest! {
        /// The fast reading of `…Z` timestamps agrees with jiff's, and
        /// declines (leaves to jiff) what it does not read.
        #[test]
        fn utc_fast_agrees_with_jiff(
            ms in 0i64..253_402_300_799_999,
            digits in 0usize..10,
            extra in 0u32..1000,
            garble in proptest::option::of((0usize..24, proptest::sample::select(b"0912:-.TZz+ ".to_vec()))),
        ) {
            let t = jiff::Timestamp::from_millisecond(ms).unwrap();
            let base = t.strftime("%Y-%m-%dT%H:%M:%S").to_string();
            let frac = format!("{:03}{:06}", ms.rem_euclid(1000), extra);
            let mut text = match digits {
                0 => format!("{base}Z"),
                n => format!("{base}.{}Z", &frac[..n]),
            };
            if let Some((at, byte)) = garble {
                let at = at.min(text.len() - 1);
                let mut bytes = text.into_bytes();
                bytes[at] = byte;
                text = String::from_utf8(bytes).unwrap();
            }
            let jiff_ms = text.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond());
            if let Some(fast) = utc_fast(text.as_bytes()) {
                proptest::prop_assert_eq!(Some(fast), jiff_ms, "{}", text);
            }
            if garble.is_none() {
                proptest::prop_assert_eq!(utc_fast(text.as_bytes()), jiff_ms, "{}", text);
            }
        }
    }

    #[test]
    fn field_path_rules() {
        assert!(FieldPath::parse("").is_err());
        assert!(FieldPath::parse("a..b").is_err());
        let p = FieldPath::parse("items.0.sku").unwrap();
        assert_eq!(
            p.get_text(&json!({"items":[{"sku":"A1"}]})).as_deref(),
            Some("A1")
        );
        assert_eq!(p.to_string(), "items.0.sku");
    }
}
