//! Events: the typed view of one behavioral record.
//!
//! Each company's pipeline has its own schema, so the type, customer, time
//! and id fields are found through configurable dotted paths. Decoding is
//! pure: bytes in, `Event` or `InvalidEvent` out. It never logs payloads;
//! the caller decides what to count and where to dead-letter.
//!
//! An event read from the wire keeps its record and an index of where each
//! object member is in it (`scan::Doc`): rules read fields in place
//! ([`Event::field`], [`Event::get`]), and the JSON tree is parsed only if
//! something asks for the whole payload ([`Event::payload`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

mod scan;

pub(crate) use scan::key_word;

/// A dotted path into a JSON object, parsed once (`customer.id` → ["customer", "id"]).
/// Paths are equal when their segments are.
#[derive(Debug, Clone)]
pub struct FieldPath {
    segments: Arc<[String]>,
    /// Each segment's first word, for look-ups in records read in place.
    words: Arc<[u64]>,
    /// The same number for the same segments, process-wide: an event
    /// remembers where a path led by it ([`Memo`]), since many rules'
    /// conditions read the same few fields of one event.
    id: u32,
}

impl FieldPath {
    /// A path of these segments (none: the payload itself).
    pub fn from_segments(segments: Vec<String>) -> FieldPath {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static IDS: OnceLock<Mutex<HashMap<Vec<String>, u32>>> = OnceLock::new();
        let id = {
            let mut ids = IDS
                .get_or_init(Mutex::default)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let next = u32::try_from(ids.len()).unwrap_or(u32::MAX);
            *ids.entry(segments.clone()).or_insert(next)
        };
        FieldPath::with_id(segments, id)
    }

    /// A path numbered `id` (`u32::MAX`: never remembered).
    fn with_id(segments: Vec<String>, id: u32) -> FieldPath {
        let words = segments
            .iter()
            .map(|s| scan::key_word(s.as_bytes()))
            .collect();
        FieldPath {
            segments: segments.into(),
            words,
            id,
        }
    }

    pub fn parse(s: &str) -> Result<FieldPath, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the field path is empty: write a field name or a dotted path such as \"customer.id\"".into());
        }
        let parts: Vec<String> = s.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return Err("the field path has an empty segment: write segments separated by single dots, e.g. \"customer.id\"".into());
        }
        Ok(FieldPath::from_segments(parts))
    }

    /// The value at this path, if every segment exists.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut v = root;
        for seg in self.segments.iter() {
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
        self.get(root)
            .map(Scalar::of_value)
            .and_then(Scalar::into_text)
            .map(Cow::into_owned)
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl PartialEq for FieldPath {
    fn eq(&self, other: &FieldPath) -> bool {
        self.segments == other.segments
    }
}

impl Eq for FieldPath {}

impl std::hash::Hash for FieldPath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.segments.hash(state);
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
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
/// event types, page paths), where the call costs more than the
/// comparison: up to 16 bytes are compared as two overlapping words, up to
/// 32 as four.
#[inline(always)]
pub(crate) fn same_text(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// Whether `s` starts with `prefix`, as [`str::starts_with`] (a byte
/// prefix), compared as [`same_text`] compares.
#[inline(always)]
pub(crate) fn text_starts_with(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| same_bytes(head, prefix.as_bytes()))
}

/// Whether `s` ends with `suffix`, as [`str::ends_with`] (a byte
/// suffix), compared as [`same_text`] compares.
#[inline(always)]
pub(crate) fn text_ends_with(s: &str, suffix: &str) -> bool {
    s.len()
        .checked_sub(suffix.len())
        .is_some_and(|at| same_bytes(&s.as_bytes()[at..], suffix.as_bytes()))
}

/// [`same_text`] of bytes.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
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
        // The first 16 bytes and the last 16, which overlap or meet.
        17..=32 => {
            word(a, 0) == word(b, 0)
                && word(a, 8) == word(b, 8)
                && word(a, n - 16) == word(b, n - 16)
                && word(a, n - 8) == word(b, n - 8)
        }
        _ => a == b,
    }
}

/// The fields every event has, checked in this order, as found (in the
/// record or the parsed payload: nothing is copied until the event is
/// built).
struct Envelope<'a> {
    kind: Cow<'a, str>,
    customer: Cow<'a, str>,
    time: Millis,
    id: Option<Cow<'a, str>>,
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
    /// Event time: drives every rule.
    pub time: Millis,
    /// The record, the type, the customer and the id.
    text: Text,
    body: Body,
}

/// What conditions read fields from: an event, or a bare payload.
pub trait Fields {
    /// See [`Event::field`].
    fn field(&self, path: &FieldPath) -> Option<Option<Scalar<'_>>>;
}

impl Fields for Event {
    fn field(&self, path: &FieldPath) -> Option<Option<Scalar<'_>>> {
        Event::field(self, path)
    }
}

impl Fields for Value {
    fn field(&self, path: &FieldPath) -> Option<Option<Scalar<'_>>> {
        tree_field(self, path.segments())
    }
}

/// An event's payload: a JSON tree, or the record read in place.
#[derive(Debug, Clone)]
enum Body {
    Tree(Value),
    /// Where each object member is in the record, which the event's text
    /// opens with ([`EventSchema::decode_lazy`]): rules read fields
    /// straight from the bytes; the tree is parsed only when something
    /// asks for the whole payload (a template, a CEL condition on it).
    Record {
        doc: scan::Doc,
        tree: std::sync::OnceLock<Value>,
        memo: Memo,
    },
}

/// Where recent paths led in one record: a small direct-mapped cache by
/// path id. A slot holds `id + 1` above the node index + 1 (0: missing).
/// Atomics only so that events can be shared across threads; each slot is
/// written whole, and a lost write is only a look-up done again.
#[derive(Default)]
struct Memo([std::sync::atomic::AtomicU64; 8]);

impl Memo {
    fn get(&self, id: u32) -> Option<Option<usize>> {
        let v = self.0[id as usize % 8].load(std::sync::atomic::Ordering::Relaxed);
        ((v >> 32) as u32 == id.wrapping_add(1) && id != u32::MAX)
            .then(|| (v as u32).checked_sub(1).map(|i| i as usize))
    }

    /// Notes where a look-up of path `id` led (nothing for a value on
    /// the way that is not an object).
    #[inline(always)]
    fn note(&self, id: u32, found: scan::Found) {
        match found {
            scan::Found::At(i) => self.put(id, Some(i)),
            scan::Found::Missing => self.put(id, None),
            scan::Found::Below(..) => {}
        }
    }

    fn put(&self, id: u32, at: Option<usize>) {
        if id != u32::MAX {
            let node = at.map_or(0, |i| i as u64 + 1);
            let v = u64::from(id + 1) << 32 | node;
            self.0[id as usize % 8].store(v, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Clone for Memo {
    fn clone(&self) -> Memo {
        Memo::default()
    }
}

impl fmt::Debug for Memo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Memo")
    }
}

impl Event {
    /// An event with this payload (which is what rules and templates read).
    pub fn new(
        kind: &str,
        customer: &str,
        time: Millis,
        id: Option<&str>,
        payload: Value,
    ) -> Event {
        Event {
            time,
            text: Text::of("", [kind, customer], id),
            body: Body::Tree(payload),
        }
    }

    /// The event type, e.g. `checkout_started`.
    #[inline]
    pub fn kind(&self) -> &str {
        self.text.part(0)
    }

    /// The customer the event is about (the key most rules group by).
    #[inline]
    pub fn customer(&self) -> &str {
        self.text.part(1)
    }

    /// The producer-assigned id, if any: it de-duplicates redelivered
    /// events.
    #[inline]
    pub fn id(&self) -> Option<&str> {
        self.text.has_id.then(|| self.text.part(2))
    }

    /// The same event with another id (or none).
    pub fn with_id(&self, id: Option<&str>) -> Event {
        let (kind, customer) = (self.kind(), self.customer());
        Event {
            time: self.time,
            text: Text::of(self.text.record(), [kind, customer], id),
            body: self.body.clone(),
        }
    }

    /// The record read in place (empty for a payload given as a tree).
    #[inline]
    fn record(&self) -> &[u8] {
        self.text.record().as_bytes()
    }

    /// An event whose payload is `bytes` read in place, as
    /// [`EventSchema::decode_lazy`] reads it (`None`: the scanner declines
    /// the record).
    #[cfg(test)]
    pub(crate) fn in_place(
        kind: &str,
        customer: &str,
        time: Millis,
        id: Option<&str>,
        bytes: &[u8],
    ) -> Option<Event> {
        let mut doc = scan::Doc::default();
        scan::object(bytes, &mut doc, scan::Watch::NONE)?;
        let text = Text::of(doc.on(bytes).whole(), [kind, customer], id);
        Some(Event {
            time,
            text,
            body: Body::Record {
                doc,
                tree: std::sync::OnceLock::new(),
                memo: Memo::default(),
            },
        })
    }

    /// The whole payload (parsed on first use when the record was read in
    /// place): what templates, previews and CEL conditions see. `Null` for
    /// an event no rule reads ([`EventSchema::decode_lazy`]).
    pub fn payload(&self) -> &Value {
        match &self.body {
            Body::Tree(v) => v,
            Body::Record { tree, .. } => tree.get_or_init(|| {
                // The scanner accepted the record, so serde_json does.
                serde_json::from_slice(self.record()).unwrap_or(Value::Null)
            }),
        }
    }

    /// The value at `path` as conditions read it: `Some(None)` when a
    /// member on the way is missing, `None` when a value on the way is not
    /// an object.
    ///
    /// A path this event has been asked for already (its memo knows where
    /// it led) is answered inline where it is asked; a first reading, in
    /// [`Event::field_first`], apart.
    #[inline]
    pub fn field(&self, path: &FieldPath) -> Option<Option<Scalar<'_>>> {
        if let Body::Record { doc, memo, .. } = &self.body {
            // The memo holds only paths `look_up` found: never the root.
            if let Some(at) = memo.get(path.id) {
                let d = doc.on(self.record());
                return Some(at.map(|i| Scalar::of_doc(d, i)));
            }
        }
        self.field_first(path)
    }

    /// [`Event::field`] of a path the memo does not know (it was asked
    /// first), or of the root, or on a tree.
    #[inline(never)]
    fn field_first(&self, path: &FieldPath) -> Option<Option<Scalar<'_>>> {
        match &self.body {
            Body::Tree(v) => tree_field(v, path.segments()),
            Body::Record { doc, memo, .. } => {
                let d = doc.on(self.record());
                if path.segments().is_empty() {
                    return Some(Some(Scalar::Object(Object(ObjectIn::Doc(d, d.top())))));
                }
                // `field` asked the memo already.
                match look_up(d, memo, path) {
                    scan::Found::At(i) => Some(Some(Scalar::of_doc(d, i))),
                    scan::Found::Missing => Some(None),
                    scan::Found::Below(..) => None,
                }
            }
        }
    }

    /// The value at `path`, as [`FieldPath::get`] finds it (array indices
    /// included).
    pub fn get(&self, path: &FieldPath) -> Option<Scalar<'_>> {
        match &self.body {
            Body::Tree(v) => path.get(v).map(Scalar::of_value),
            Body::Record { doc, memo, .. } => {
                let d = doc.on(self.record());
                if path.segments().is_empty() {
                    return Some(Scalar::Object(Object(ObjectIn::Doc(d, d.top()))));
                }
                match locate(d, memo, path) {
                    scan::Found::At(i) => Some(Scalar::of_doc(d, i)),
                    scan::Found::Missing => None,
                    // Only an array can be walked further: on the tree.
                    scan::Found::Below(i, _) if d.raw(i).starts_with('[') => {
                        path.get(self.payload()).map(Scalar::of_value)
                    }
                    scan::Found::Below(..) => None,
                }
            }
        }
    }

    /// The value at `path` as an identifier (see [`FieldPath::get_text`]).
    pub fn text(&self, path: &FieldPath) -> Option<Cow<'_, str>> {
        self.get(path)?.into_text()
    }

    /// The payload with only `paths` ([`crate::engine::project::project`]),
    /// built from the record without parsing the rest of it.
    pub fn project(&self, paths: &[FieldPath]) -> Value {
        crate::engine::project::project_members(&self.members(), paths)
    }

    /// The top-level members for [`crate::engine::project`]'s writer:
    /// the tree's map, or the record in place.
    pub(crate) fn members(&self) -> Members<'_> {
        match &self.body {
            Body::Tree(v) => Members::of(v),
            Body::Record { doc, .. } => {
                let d = doc.on(self.record());
                Members::Doc(d, d.top())
            }
        }
    }
}

/// Where `path` leads in a record, remembered in `memo`.
fn locate(d: scan::DocRef<'_>, memo: &Memo, path: &FieldPath) -> scan::Found {
    match memo.get(path.id) {
        Some(at) => at.map_or(scan::Found::Missing, scan::Found::At),
        None => look_up(d, memo, path),
    }
}

/// Where `path` leads in a record whose `memo` does not know it yet,
/// remembered there.
fn look_up(d: scan::DocRef<'_>, memo: &Memo, path: &FieldPath) -> scan::Found {
    let found = d.lookup(path);
    memo.note(path.id, found);
    found
}

/// An object's members, in a tree or in a record read in place.
pub(crate) enum Members<'a> {
    /// The payload is not an object.
    Empty,
    Tree(&'a serde_json::Map<String, Value>),
    Doc(scan::DocRef<'a>, std::ops::Range<usize>),
}

/// A member's value as [`Members::get`] gives it.
pub(crate) enum MemberValue<'a> {
    Tree(&'a Value),
    Doc(scan::DocRef<'a>, usize),
}

impl<'a> Members<'a> {
    /// The members of `v` (none when it is not an object).
    pub(crate) fn of(v: &'a Value) -> Members<'a> {
        match v {
            Value::Object(m) => Members::Tree(m),
            _ => Members::Empty,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<MemberValue<'a>> {
        self.get_by_word(key, scan::key_word(key.as_bytes()))
    }

    /// [`Members::get`] with the key's [`key_word`] worked out already.
    #[inline]
    pub(crate) fn get_by_word(&self, key: &str, word: u64) -> Option<MemberValue<'a>> {
        match self {
            Members::Empty => None,
            Members::Tree(m) => m.get(key).map(MemberValue::Tree),
            Members::Doc(d, level) => d
                .find(level.clone(), key, word)
                .map(|i| MemberValue::Doc(*d, i)),
        }
    }
}

impl<'a> MemberValue<'a> {
    /// Its members when it is an object.
    pub(crate) fn object(&self) -> Option<Members<'a>> {
        match self {
            MemberValue::Tree(v @ Value::Object(_)) => Some(Members::of(v)),
            MemberValue::Tree(_) => None,
            MemberValue::Doc(d, i) => d.children(*i).map(|c| Members::Doc(*d, c)),
        }
    }

    /// It as a JSON value.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            MemberValue::Tree(v) => (*v).clone(),
            MemberValue::Doc(d, i) => doc_value(*d, *i),
        }
    }

    /// It read as a scalar.
    pub(crate) fn scalar(&self) -> Scalar<'a> {
        match self {
            MemberValue::Tree(v) => Scalar::of_value(v),
            MemberValue::Doc(d, i) => Scalar::of_doc(*d, *i),
        }
    }
}

/// The value at node `i` as serde_json would parse it (the text is valid).
fn doc_value(d: scan::DocRef<'_>, i: usize) -> Value {
    scan::value(d.raw(i)).unwrap_or(Value::Null)
}

/// [`Event::field`] on a tree.
fn tree_field<'a, S: AsRef<str>>(root: &'a Value, path: &[S]) -> Option<Option<Scalar<'a>>> {
    let mut v = root;
    for seg in path {
        match v {
            Value::Object(m) => match member(m, seg.as_ref()) {
                Some(next) => v = next,
                None => return Some(None),
            },
            _ => return None,
        }
    }
    Some(Some(Scalar::of_value(v)))
}

/// A field's value as rules read it: borrowed from the tree or the record.
/// Numbers are typed as serde_json types them: integers that fit `i64`,
/// larger ones that fit `u64`, and `f64` for the rest.
#[derive(Debug, Clone)]
pub enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Null,
    Object(Object<'a>),
    Array,
}

/// An object value, for `has()`.
#[derive(Debug, Clone)]
pub struct Object<'a>(ObjectIn<'a>);

#[derive(Debug, Clone)]
enum ObjectIn<'a> {
    Tree(&'a serde_json::Map<String, Value>),
    Doc(scan::DocRef<'a>, std::ops::Range<usize>),
}

impl Object<'_> {
    pub fn contains(&self, key: &str) -> bool {
        match &self.0 {
            ObjectIn::Tree(m) => m.contains_key(key),
            ObjectIn::Doc(d, level) => d
                .find(level.clone(), key, scan::key_word(key.as_bytes()))
                .is_some(),
        }
    }
}

impl<'a> Scalar<'a> {
    pub fn of_value(v: &'a Value) -> Scalar<'a> {
        match v {
            Value::String(s) => Scalar::Str(Cow::Borrowed(s)),
            Value::Number(n) => Scalar::of_number(n),
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Null => Scalar::Null,
            Value::Object(m) => Scalar::Object(Object(ObjectIn::Tree(m))),
            Value::Array(_) => Scalar::Array,
        }
    }

    fn of_number(n: &serde_json::Number) -> Scalar<'a> {
        match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Scalar::Int(i),
            (None, Some(u), _) => Scalar::UInt(u),
            (_, _, f) => Scalar::Float(f.unwrap_or(f64::NAN)),
        }
    }

    /// The value at node `i`. A string without escapes, the most common
    /// value, is answered here, inline where it is asked for; the rest
    /// (numbers, objects, escapes) in [`Scalar::of_doc_rest`], whose
    /// number reading needs enough registers that entering and leaving it
    /// cost more than a string's whole answer.
    #[inline(always)]
    fn of_doc(d: scan::DocRef<'a>, i: usize) -> Scalar<'a> {
        match d.plain_str(i) {
            Some(s) => Scalar::Str(Cow::Borrowed(s)),
            None => Scalar::of_doc_rest(d, i),
        }
    }

    #[inline(never)]
    fn of_doc_rest(d: scan::DocRef<'a>, i: usize) -> Scalar<'a> {
        match d.children(i) {
            Some(level) => Scalar::Object(Object(ObjectIn::Doc(d, level))),
            None => Scalar::of_raw(d.raw(i)).unwrap_or(Scalar::Null),
        }
    }

    /// A value's raw JSON text (valid, from the scanner), read as
    /// serde_json reads it; objects are not looked into.
    fn of_raw(raw: &'a str) -> Option<Scalar<'a>> {
        Some(match raw.as_bytes().first()? {
            b'"' => match scan::plain_str(raw) {
                Some(s) => Scalar::Str(Cow::Borrowed(s)),
                None => Scalar::Str(Cow::Owned(serde_json::from_str(raw).ok()?)),
            },
            b't' => Scalar::Bool(true),
            b'f' => Scalar::Bool(false),
            b'n' => Scalar::Null,
            // Objects are read through the doc (`of_doc`).
            b'[' => Scalar::Array,
            b'{' => return None,
            _ => match scan::plain_number(raw) {
                Some(scan::Plain::Int(i)) => Scalar::Int(i),
                Some(scan::Plain::Float(f)) => Scalar::Float(f),
                None => Scalar::of_number(&serde_json::from_str(raw).ok()?),
            },
        })
    }

    /// As an identifier: strings as-is (non-empty), numbers and booleans
    /// printed as serde_json prints them; null, objects and arrays are not
    /// identifiers.
    pub fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Str(s) if !s.is_empty() => Some(s),
            Scalar::Int(i) => Some(Cow::Owned(i.to_string())),
            Scalar::UInt(u) => Some(Cow::Owned(u.to_string())),
            Scalar::Float(f) => serde_json::Number::from_f64(f).map(|n| Cow::Owned(n.to_string())),
            Scalar::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
            _ => None,
        }
    }

    /// As an event time: see [`parse_time`].
    pub fn time(&self) -> Option<Millis> {
        match self {
            Scalar::Str(s) => parse_timestamp(s),
            Scalar::Int(i) => Some(*i),
            _ => None,
        }
    }
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
    /// reads the payload in place: the record is validated and its object
    /// members located in one pass, and rules read their fields straight
    /// from the bytes. Nothing of the payload is kept for an event no rule
    /// reads (`read(type)` is false): most events on a busy topic concern
    /// no rule.
    ///
    /// `read` is a `dyn` rather than a generic closure so that this, the
    /// hottest function after the engine's, is one function that every
    /// caller shares (the daemon, replay, rule tests, the benchmark). A
    /// generic was compiled once per caller, and the profile-guided build
    /// (deploy/pgo/) trains through replay: the daemon's copy never ran in
    /// training and was built as cold code, and the benchmark's had no
    /// profile (decode alone 25% slower than in the build without a
    /// profile).
    pub fn decode_lazy(
        &self,
        bytes: &[u8],
        read: &dyn Fn(&str) -> bool,
    ) -> Result<Arc<Event>, InvalidEvent> {
        // The members are read into a buffer kept per thread, and copied
        // out at their exact size only for an event a rule reads. The event
        // is built in its `Arc` here, as every caller shares it: moved out
        // by value it was copied twice more (it is some 230 bytes).
        thread_local! {
            static SCRATCH: std::cell::RefCell<scan::Doc> = std::cell::RefCell::default();
        }
        SCRATCH.with_borrow_mut(|doc| {
            // The envelope's members are noted as the scan passes them.
            let watch = scan::Watch::of([
                Some(&self.kind),
                Some(&self.customer),
                Some(&self.time),
                self.id.as_ref(),
            ]);
            let Some(()) = scan::object(bytes, doc, watch) else {
                // Not an object, not JSON, or what the scanner leaves to
                // serde_json: the full parse decides (and names the problem).
                return self.decode(bytes).map(Arc::new);
            };
            let d = doc.on(bytes);
            // Where the envelope's paths led is remembered for the rules,
            // which read the customer (their keys) and the type again.
            let memo = Memo::default();
            // Each in its place in the watch list.
            let field = |j, path| doc_field(d, &memo, doc.watched(d, j, path), path);
            let env = self.envelope([
                field(0, &self.kind),
                field(1, &self.customer),
                field(2, &self.time),
                self.id.as_ref().and_then(|path| field(3, path)),
            ])?;
            Ok(Arc::new(match read(&env.kind) {
                false => env.into_event("", Body::Tree(Value::Null)),
                true => env.into_event(
                    d.whole(),
                    Body::Record {
                        doc: doc.clone(),
                        tree: std::sync::OnceLock::new(),
                        memo,
                    },
                ),
            }))
        })
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
        let field = |p: &FieldPath| p.get(&payload).map(Scalar::of_value);
        let env = self.envelope([
            field(&self.kind),
            field(&self.customer),
            field(&self.time),
            self.id.as_ref().and_then(field),
        ])?;
        // The envelope may borrow from the payload the body then takes.
        let (time, text) = (env.time, env.text(""));
        Ok(Event {
            time,
            text,
            body: Body::Tree(payload),
        })
    }

    /// Type, customer, time and id from the values found at their paths
    /// (in the parsed payload, or in the record in place: `decode_lazy`).
    /// One place for the checks and their errors, whichever way the event
    /// was read. The values are found by the caller, inline: a closure
    /// called here for each was a call of a hundred instructions each.
    fn envelope<'a>(
        &self,
        [kind, customer, time, id]: [Option<Scalar<'a>>; 4],
    ) -> Result<Envelope<'a>, InvalidEvent> {
        let missing = |path: &FieldPath, role| InvalidEvent::MissingField {
            field: path.to_string(),
            role,
        };
        let kind = match kind {
            Some(Scalar::Str(s)) if !s.is_empty() => s,
            _ => return Err(missing(&self.kind, "type")),
        };
        let customer = customer
            .and_then(Scalar::into_text)
            .ok_or_else(|| missing(&self.customer, "customer"))?;
        let time = match time {
            None | Some(Scalar::Null) => return Err(missing(&self.time, "time")),
            Some(f) => f.time().ok_or_else(|| InvalidEvent::BadTime {
                field: self.time.to_string(),
            })?,
        };
        let id = id.and_then(Scalar::into_text);
        Ok(Envelope {
            kind,
            customer,
            time,
            id,
        })
    }
}

/// The field at `path` of a record in place, for the envelope, where the
/// scan `found` it; remembered in `memo`. An array on the way is parsed
/// and walked; a container found there is reported as [`Scalar::Array`]
/// (the envelope only asks whether a value is a scalar).
///
/// Inline where the envelope asks (four times per event); an array on the
/// way, which parses JSON, is [`doc_field_below`], apart, so that its
/// registers are saved and restored only when it runs.
#[inline(always)]
fn doc_field<'a>(
    d: scan::DocRef<'a>,
    memo: &Memo,
    found: scan::Found,
    path: &FieldPath,
) -> Option<Scalar<'a>> {
    // The memo never holds the root (see `Event::field`).
    if !path.segments().is_empty() {
        memo.note(path.id, found);
    }
    match found {
        scan::Found::At(i) => Some(Scalar::of_doc(d, i)),
        scan::Found::Missing => None,
        scan::Found::Below(i, rest) => doc_field_below(d, path, i, rest),
    }
}

/// [`doc_field`] when the value at node `i` is not an object and `rest`
/// segments of `path` remain below it.
#[inline(never)]
fn doc_field_below<'a>(
    d: scan::DocRef<'a>,
    path: &FieldPath,
    i: usize,
    rest: usize,
) -> Option<Scalar<'a>> {
    let v: Value = serde_json::from_str(d.raw(i)).ok()?;
    let segs = path.segments();
    // Built per record: not numbered (nothing remembers it).
    let tail = FieldPath::with_id(segs[segs.len() - rest..].to_vec(), u32::MAX);
    Some(match tail.get(&v)? {
        Value::String(s) => Scalar::Str(Cow::Owned(s.clone())),
        Value::Number(n) => Scalar::of_number(n),
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Null => Scalar::Null,
        Value::Object(_) | Value::Array(_) => Scalar::Array,
    })
}

impl Envelope<'_> {
    /// The event's text, with `record` first (see [`Text`]).
    fn text(&self, record: &str) -> Text {
        Text::of(record, [&self.kind, &self.customer], self.id.as_deref())
    }

    fn into_event(self, record: &str, body: Body) -> Event {
        Event {
            time: self.time,
            text: self.text(record),
            body,
        }
    }
}

/// An event's record (when it is read in place: [`Body::Record`]; empty
/// otherwise), type, customer and id, in one allocation, where they were
/// four: every event is built, and dropped. The type, customer and id are
/// found in the record, as most are (plain strings, not escaped), or
/// follow it.
#[derive(Debug, Clone)]
struct Text {
    text: Box<str>,
    /// The record is `text[..record]`.
    record: usize,
    /// Where the type, the customer and the id are in `text` (start, end).
    parts: [(usize, usize); 3],
    has_id: bool,
}

impl Text {
    #[inline]
    fn of(record: &str, [kind, customer]: [&str; 2], id: Option<&str>) -> Text {
        // A part borrowed from the record is a range of it: whole
        // characters of valid UTF-8, so its ends are character boundaries.
        // An empty part is anywhere.
        let inside = |part: &str| {
            let at = (part.as_ptr() as usize).wrapping_sub(record.as_ptr() as usize);
            match part.is_empty() {
                true => Some(0),
                false => (at <= record.len() && part.len() <= record.len() - at).then_some(at),
            }
        };
        let (has_id, id) = (id.is_some(), id.unwrap_or(""));
        // Most events: plain strings, all three found in the record.
        if let (Some(k), Some(c), Some(i)) = (inside(kind), inside(customer), inside(id)) {
            return Text {
                text: Box::from(record),
                record: record.len(),
                parts: [
                    (k, k + kind.len()),
                    (c, c + customer.len()),
                    (i, i + id.len()),
                ],
                has_id,
            };
        }
        Text::copied(record, [kind, customer, id], has_id)
    }

    /// [`Text::of`] when a part is not in the record (escaped, a number,
    /// or no record kept): the parts follow the record.
    #[inline(never)]
    fn copied(record: &str, parts: [&str; 3], has_id: bool) -> Text {
        let len = record.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut text = String::with_capacity(len);
        text.push_str(record);
        let spans = parts.map(|part| {
            text.push_str(part);
            (text.len() - part.len(), text.len())
        });
        Text {
            text: text.into_boxed_str(),
            record: record.len(),
            parts: spans,
            has_id,
        }
    }

    /// The record (empty when none was kept).
    #[inline]
    fn record(&self) -> &str {
        self.range(0, self.record)
    }

    /// The type (0), the customer (1) or the id (2).
    #[inline]
    fn part(&self, i: usize) -> &str {
        let (from, to) = self.parts[i];
        self.range(from, to)
    }

    /// `text[from..to]` for the ranges `Text::of` made.
    #[inline(always)]
    fn range(&self, from: usize, to: usize) -> &str {
        debug_assert!(
            from <= to && self.text.is_char_boundary(from) && self.text.is_char_boundary(to)
        );
        // SAFETY: `Text::of` made the record and each part a range of
        // `text` whose ends are character boundaries (what it copied, it
        // copied whole; a part found in the record is whole characters of
        // it). Checked, these ranges cost some 110 instructions an event
        // (the customer is read for every rule an event meets): more than
        // sharing one allocation saves in all (some 90).
        unsafe { self.text.get_unchecked(from..to) }
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
    // The fixed part as an array: every index below is checked once, here.
    let head: &[u8; 20] = b.first_chunk()?;
    // Eight bytes at a time: "YYYY-MM-", "DDTHH:MM" and (overlapping)
    // "HH:MM:SS", each checked for its separators and digits in a few
    // word operations rather than byte by byte (every event has a time).
    let word = |at: usize| u64::from_le_bytes(*head[at..].first_chunk().expect("eight bytes"));
    let ymd = digits(word(0), [(4, b'-'), (7, b'-')])?;
    let dh = digits(word(8), [(2, b'T'), (5, b':')])?;
    let hms = digits(word(11), [(2, b':'), (5, b':')])?;
    let at = |w: u64, k: u32| (w >> (8 * k)) as i64 & 0xff;
    let two = |w: u64, k: u32| at(w, k) * 10 + at(w, k + 1);
    let (year, month, day) = (two(ymd, 0) * 100 + two(ymd, 2), two(ymd, 5), two(dh, 0));
    let (hour, minute, second) = (two(hms, 0), two(hms, 3), two(hms, 6));
    let mut i = 19;
    let mut millis = 0;
    if head[19] == b'.' {
        let fraction = &b[20..];
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        // Milliseconds: the first three digits (later ones truncate, as
        // jiff's as_millisecond does for times after 1970).
        for k in 0..3 {
            let d = fraction.get(k).filter(|_| k < n).map_or(0, |c| c - b'0');
            millis = millis * 10 + i64::from(d);
        }
        i = 20 + n;
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

/// The bytes of `w` (little-endian) as digit values, 0–9 each, when its
/// bytes at the two `(index, byte)` separators hold those bytes and every
/// other byte is an ASCII digit; the separators' own bytes come out 0.
#[inline(always)]
fn digits(w: u64, seps: [(u32, u8); 2]) -> Option<u64> {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    let (mask, value) = seps.iter().fold((0, 0), |(m, v), &(k, c)| {
        (m | 0xff << (8 * k), v | u64::from(c) << (8 * k))
    });
    // The separators read as '0', so that one test checks every byte:
    // 0x30..=0x3f has the high nibble 3, and adding 6 keeps it 3 only up
    // to 0x39 (no byte carries into the next: none is above 0x3f then).
    let x = (w & !mask) | (ZEROS & mask);
    (w & mask == value
        && x & HIGH == ZEROS
        && x.wrapping_add(0x0606_0606_0606_0606) & HIGH == ZEROS)
        .then(|| x - ZEROS)
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
    use proptest::strategy::Strategy;
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
        assert_eq!(e.kind(), "order_placed");
        assert_eq!(e.customer(), "42");
        assert_eq!(e.time, 1_795_514_400_000);
        assert_eq!(e.id(), Some("e1"));
        let e = schema()
            .decode(br#"{"type":"x","customer":{"id":"c1"},"ts":1795514400000}"#)
            .unwrap();
        assert_eq!(e.time, 1_795_514_400_000);
        assert_eq!(e.id(), None);
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
            // Repeated keys: the last one stands, as in serde_json's map.
            br#"{"type":"a","customer":{"id":"c"},"ts":1,"type":"b","event_id":"e","event_id":"f"}"#,
            br#"{"customer":{"id":"c"},"ts":1,"type":"x","customer":{"name":"n"}}"#,
            br#"{"type":"x","customer":"c","ts":1}"#,
            br#"{"type":7,"customer":{"id":"c"},"ts":1}"#,
            br#"{"type":"x","customer":{"id":"c"},"ts":false}"#,
            br#"{"type":"x","customer":{"id":"c"},"ts":null}"#,
            br#"{"type":"x","customer":{"id":"c"},"ts":1,"n":1e999}"#,
            b"[1]",
            b"nope",
        ];
        for r in records {
            let full = s.decode(r);
            let lazy = s.decode_lazy(r, &|_| false);
            match (&full, &lazy) {
                (Ok(f), Ok(l)) => {
                    assert_eq!(
                        (f.kind(), f.customer(), f.time, f.id()),
                        (l.kind(), l.customer(), l.time, l.id())
                    );
                    assert_eq!(
                        *l.payload(),
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
            if let Ok(e) = s.decode_lazy(r, &|_| true) {
                assert_eq!(Some(e.payload()), full.as_ref().ok().map(|f| f.payload()));
            }
        }
        // A key with escapes goes to serde_json, which reads it the same.
        let e = s
            .decode_lazy(
                br#"{"ty\u0070e":"x","customer":{"id":"c"},"ts":1}"#,
                &|_| false,
            )
            .unwrap();
        assert_eq!((e.kind(), e.customer(), e.time), ("x", "c", 1));
        let p = FieldPath::parse("items.0.sku").unwrap();
        let nested = EventSchema {
            customer: p,
            ..schema()
        };
        let e = nested
            .decode_lazy(br#"{"type":"x","items":[{"sku":"A1"}],"ts":1}"#, &|_| false)
            .unwrap();
        assert_eq!(e.customer(), "A1");
        let cart = [FieldPath::parse("cart.total").unwrap()];
        let e = schema()
            .decode_lazy(
                br#"{"type":"x","customer":{"id":"c"},"ts":1,"cart":{"total":5,"items":[1]},"big":"zzz"}"#,
                &|_| true,
            )
            .unwrap();
        let at = |p: &str| e.field(&FieldPath::parse(p).unwrap());
        assert!(matches!(at("cart.total"), Some(Some(Scalar::Int(5)))));
        assert!(matches!(at("cart.gone"), Some(None)));
        assert!(at("big.deeper").is_none(), "not an object");
        assert_eq!(e.project(&cart), serde_json::json!({"cart": {"total": 5}}));
        assert_eq!(e.payload()["big"], "zzz", "the whole payload on demand");
    }

    proptest::proptest! {
        /// Type, customer and id read as every event is read (found in
        /// the record when plain, copied after it when escaped or a
        /// number) are those of the parsed tree, whether the record is
        /// kept or not, and stay so in a copy with another id.
        #[test]
        fn envelope_texts_agree_with_the_tree(
            kind in "[a-c\"\\\\\n é😀]{1,12}",
            customer in proptest::prop_oneof![
                "[a-c\"\\\\\t é]{1,12}".prop_map(Value::from),
                (-1000i64..1000).prop_map(Value::from),
            ],
            id in proptest::option::of("[a-c\"é]{0,12}"),
            pad in "[a-c]{0,20}",
        ) {
            let mut record = json!({
                "pad": pad,
                "type": kind,
                "customer": {"id": customer},
                "ts": 1,
            });
            if let Some(id) = &id {
                record["event_id"] = json!(id);
            }
            let bytes = serde_json::to_vec(&record).unwrap();
            let s = schema();
            let full = s.decode(&bytes).unwrap();
            for kept in [false, true] {
                let e = s.decode_lazy(&bytes, &|_| kept).unwrap();
                proptest::prop_assert_eq!(e.kind(), full.kind());
                proptest::prop_assert_eq!(e.customer(), full.customer());
                proptest::prop_assert_eq!(e.id(), full.id());
                // An empty id is none.
                proptest::prop_assert_eq!(e.id(), id.as_deref().filter(|id| !id.is_empty()));
                let other = e.with_id(Some("other"));
                proptest::prop_assert_eq!(
                    (other.kind(), other.customer(), other.id(), other.time),
                    (e.kind(), e.customer(), Some("other"), e.time)
                );
                if kept {
                    proptest::prop_assert_eq!(e.payload(), &record);
                    proptest::prop_assert_eq!(other.payload(), &record);
                }
            }
        }
    }

    proptest::proptest! {
        /// `same_text` is `==`, at every length around its word sizes,
        /// for equal texts and texts differing in any one byte.
        #[test]
        fn same_text_is_equality(
            a in "[a-c_é]{0,40}",
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

        /// `text_starts_with` and `text_ends_with` are `str`'s, for every
        /// prefix and suffix of a text (at every length around the word
        /// sizes), each also with one byte changed, and for texts longer
        /// than the one they are tested on.
        #[test]
        fn text_starts_and_ends_with_are_strs(
            s in "[a-c/é-]{0,40}",
            flip in 0usize..80,
        ) {
            let cuts = (0..=s.len()).filter(|&i| s.is_char_boundary(i));
            for at in cuts {
                for part in [&s[..at], &s[at..]] {
                    let mut changed = part.to_string().into_bytes();
                    if !changed.is_empty() {
                        let i = flip % changed.len();
                        changed[i] = if changed[i] == b'a' { b'b' } else { b'a' };
                    }
                    let changed = String::from_utf8(changed).unwrap_or_default();
                    let longer = format!("{s}x");
                    for p in [part, changed.as_str(), longer.as_str()] {
                        proptest::prop_assert_eq!(text_starts_with(&s, p), s.starts_with(p));
                        proptest::prop_assert_eq!(text_ends_with(&s, p), s.ends_with(p));
                    }
                }
            }
        }
    }

    /// Every byte value at every position of the fixed part: the fast
    /// reading takes only what jiff reads the same, and declines the rest
    /// (the word-wise digit test has edges at '/', ':' and bytes from 0xfa
    /// up that a sampled garble can miss).
    #[test]
    fn utc_fast_agrees_with_jiff_for_every_byte_at_every_position() {
        for text in ["2026-12-06T15:30:41Z", "1999-02-28T23:59:59.123456Z"] {
            for at in 0..20 {
                for byte in 0..=u8::MAX {
                    let mut bytes = text.as_bytes().to_vec();
                    bytes[at] = byte;
                    let jiff_ms = std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                        .map(|t| t.as_millisecond());
                    if let Some(fast) = utc_fast(&bytes) {
                        assert_eq!(Some(fast), jiff_ms, "{}", String::from_utf8_lossy(&bytes));
                    }
                    if byte == text.as_bytes()[at] {
                        assert!(jiff_ms.is_some() && utc_fast(&bytes) == jiff_ms, "{text}");
                    }
                }
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

    /// JSON values for the in-place reading tests: every kind, nested
    /// objects with a few short keys (so paths hit and miss), numbers of
    /// every form serde_json types differently.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1000i64..1000).prop_map(|i| Value::from(i as f64 / 8.0)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[ab\\\"\u{e9}]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::vec(("[a-c]", inner), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A field as a comparable text: objects by their members' names
    /// (the tree's and the record's live in different places).
    fn shown(f: Option<Option<Scalar<'_>>>) -> Option<Option<String>> {
        f.map(|f| {
            f.map(|s| match s {
                Scalar::Object(o) => {
                    let held: Vec<&str> = ["a", "b", "c"]
                        .into_iter()
                        .filter(|k| o.contains(k))
                        .collect();
                    format!("Object{held:?}")
                }
                other => format!("{other:?}"),
            })
        })
    }

    proptest::proptest! {
        /// A record read in place answers every path as the tree
        /// serde_json parses from it: fields, identifiers, times,
        /// projections. Members are written with repeated keys too (the
        /// last one wins).
        #[test]
        fn in_place_reads_agree_with_the_tree(
            members in proptest::collection::vec(("[a-c]", any_json()), 0..6),
            paths in proptest::collection::vec("[a-c](\\.([a-c]|0)){0,3}", 1..4),
        ) {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("{k:?}: {v}"))
                .collect();
            let text = format!("{{{}}}", body.join(", "));
            let tree: Value = serde_json::from_str(&text).unwrap();
            let e = Event::in_place("t", "c", 0, None, text.as_bytes()).unwrap();
            let paths: Vec<FieldPath> = paths.iter().map(|p| FieldPath::parse(p).unwrap()).collect();
            // Twice over: the second reads come from the event's memo.
            for p in paths.iter().chain(&paths) {
                proptest::prop_assert_eq!(shown(e.field(p)), shown(tree_field(&tree, p.segments())), "{} in {}", p, text);
                proptest::prop_assert_eq!(e.text(p).map(Cow::into_owned), p.get_text(&tree), "{} in {}", p, text);
                proptest::prop_assert_eq!(e.get(p).and_then(|s| s.time()), p.get(&tree).and_then(parse_time));
            }
            let root = FieldPath::from_segments(Vec::new());
            proptest::prop_assert_eq!(shown(e.field(&root)), shown(tree_field::<&str>(&tree, &[])));
            proptest::prop_assert_eq!(e.project(&paths), crate::engine::project::project(&tree, &paths));
            proptest::prop_assert_eq!(e.payload(), &tree);
        }
    }

    /// Paths whose numbers share a memo slot, read in turns, each still
    /// find their own field.
    #[test]
    fn the_memo_keeps_paths_apart() {
        let text = br#"{"a": 1, "b": {"c": "x"}, "d": [1]}"#;
        let e = Event::in_place("t", "c", 0, None, text).unwrap();
        let tree: Value = serde_json::from_slice(text).unwrap();
        let paths: Vec<FieldPath> = (0..40)
            .map(|i| FieldPath::parse(["a", "b.c", "b.z", "d.0", "q"][i % 5]).unwrap())
            .chain((0..24).map(|i| FieldPath::parse(&format!("n{i}.m")).unwrap()))
            .collect();
        for _ in 0..3 {
            for p in &paths {
                assert_eq!(e.text(p).map(Cow::into_owned), p.get_text(&tree), "{p}");
            }
        }
        assert_eq!(
            FieldPath::parse("b.c").unwrap(),
            FieldPath::from_segments(vec!["b".into(), "c".into()])
        );
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
