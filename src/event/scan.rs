//! One validating pass over a JSON record that indexes its object members
//! without building anything (a [`Doc`]): how
//! [`super::EventSchema::decode_lazy`] reads events in place.
//!
//! The scanner accepts exactly the JSON grammar (RFC 8259) that
//! serde_json accepts, nested up to serde_json's depth limit. It gives up
//! (returns `None`) on anything it does not handle itself: invalid JSON, a
//! record that is not an object, keys with escapes outside arrays, nesting
//! deeper than the limit, a record over 4 GiB. The caller then takes the
//! full serde_json parse, which decides the same record and names its
//! problem. So the scanner never accepts a record serde_json would reject,
//! and a record it declines costs only the time it took to decline.
//!
//! Values are returned as their raw text (always valid JSON, always valid
//! UTF-8), to be read as far as needed. UTF-8 is checked where it can
//! occur, inside strings, as they are scanned: everything else in valid
//! JSON is ASCII, so a record is not walked twice.

/// serde_json's recursion limit: deeper records go to serde_json, which
/// rejects them.
const MAX_DEPTH: usize = 128;

/// One object member of a scanned record: where its key and its value
/// are, and where the next member of the same object is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    /// The key's first eight bytes (zeros past its end), which with its
    /// length settles most comparisons in one step.
    word: u64,
    /// The key's text, without quotes (keys with escapes are declined).
    key: u32,
    key_len: u32,
    /// The value's raw text.
    val: u32,
    val_end: u32,
    /// One past this member's last nested node: its next sibling, if any.
    next: u32,
    /// The value is a string without escapes.
    plain: bool,
}

/// The first eight bytes of `key`, zeros past its end.
#[inline(always)]
pub(crate) fn key_word(key: &[u8]) -> u64 {
    let n = key.len();
    if let Some(first) = key.first_chunk::<8>() {
        return u64::from_le_bytes(*first);
    }
    if n >= 4 {
        // Two overlapping halves (the bytes they share are the same).
        let lo = u32::from_le_bytes(key[..4].try_into().expect("4 bytes"));
        let hi = u32::from_le_bytes(key[n - 4..].try_into().expect("4 bytes"));
        return u64::from(lo) | u64::from(hi) << ((n - 4) * 8);
    }
    key.iter()
        .enumerate()
        .fold(0, |w, (i, &b)| w | u64::from(b) << (i * 8))
}

/// Every object member of a record, at every depth outside arrays, in
/// record order: the record read in place. Looking a path up compares
/// keys along it; nothing is copied or built.
#[derive(Debug, Clone, Default)]
pub(crate) struct Doc {
    nodes: Vec<Node>,
    /// For each [`Watch`] key, the last top-level member whose key has its
    /// first word and length (`u32::MAX`: none).
    watched: [u32; WATCHED],
}

/// How many top-level keys one scan can watch for: an event's envelope
/// (type, customer, time, id).
pub(crate) const WATCHED: usize = 4;

/// Top-level keys a scan notes as it passes them, by first word and
/// length: the first segments of the envelope's paths, which every event
/// is asked for. Noting them costs a few compares per top-level member;
/// looking each up afterwards walked the whole top level (the last of a
/// repeated key counts), some 160 instructions a path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch([(u64, u32); WATCHED]);

impl Watch {
    /// Watches for nothing.
    pub(crate) const NONE: Watch = Watch([(0, u32::MAX); WATCHED]);

    /// Watches for the first segment of each path (none for `None` or the
    /// empty path).
    #[inline]
    pub(crate) fn of(paths: [Option<&super::FieldPath>; WATCHED]) -> Watch {
        Watch(paths.map(|p| match p {
            Some(p) if !p.segments().is_empty() => (p.words[0], p.segments()[0].len() as u32),
            _ => (0, u32::MAX),
        }))
    }
}

impl Doc {
    /// `bytes` must be the record this was read from.
    pub(crate) fn on<'a>(&'a self, bytes: &'a [u8]) -> DocRef<'a> {
        DocRef {
            b: bytes,
            nodes: &self.nodes,
        }
    }

    /// Where `path` leads in `d` (this doc on its record), when the scan
    /// watched for its first segment as key `j` of its [`Watch`]: as
    /// [`DocRef::lookup`] finds it, without walking the top level. A path
    /// of one segment (every envelope path by default) is answered here,
    /// inline; others in [`Doc::watched_rest`].
    #[inline(always)]
    pub(crate) fn watched(&self, d: DocRef<'_>, j: usize, path: &super::FieldPath) -> Found {
        match (path.segments(), self.watched[j]) {
            ([_], u32::MAX) => Found::Missing,
            // Up to eight bytes, the word and the length are the key; a
            // longer one is compared whole. The last member with this word
            // and length was noted: when it is another key, the walk decides.
            ([first], at) if first.len() <= 8 || super::same_text(d.key(at as usize), first) => {
                Found::At(at as usize)
            }
            _ => self.watched_rest(d, j, path),
        }
    }

    /// [`Doc::watched`] of a path of several segments (or none), or of a
    /// long key another one shares its first word and length with.
    #[inline(never)]
    fn watched_rest(&self, d: DocRef<'_>, j: usize, path: &super::FieldPath) -> Found {
        let Some(first) = path.segments().first() else {
            return d.lookup(path);
        };
        match self.watched[j] {
            u32::MAX => Found::Missing,
            at if super::same_text(d.key(at as usize), first) => d.lookup_below(at as usize, path),
            _ => d.lookup(path),
        }
    }
}

/// A [`Doc`] with its record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DocRef<'a> {
    b: &'a [u8],
    nodes: &'a [Node],
}

/// Where a path leads in a [`Doc`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Found {
    /// The member at this node.
    At(usize),
    /// A member on the way, or the last one, is missing.
    Missing,
    /// The value at this node is not an object, and `rest` segments of the
    /// path remain below it.
    Below(usize, usize),
}

impl<'a> DocRef<'a> {
    fn text(&self, from: u32, to: u32) -> &'a str {
        let bytes = &self.b[from as usize..to as usize];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: the nodes are ranges the scanner accepted in `self.b`
        // (see `Scanner::text`).
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The whole record (which the scan accepted: it is UTF-8).
    pub(crate) fn whole(&self) -> &'a str {
        self.text(0, self.b.len() as u32)
    }

    /// The key of node `i`.
    pub(crate) fn key(&self, i: usize) -> &'a str {
        let n = &self.nodes[i];
        self.text(n.key, n.key + n.key_len)
    }

    /// The raw text of the value at node `i`.
    pub(crate) fn raw(&self, i: usize) -> &'a str {
        let n = &self.nodes[i];
        self.text(n.val, n.val_end)
    }

    /// The content of the value at node `i` when it is a string without
    /// escapes (known from the scan: nothing is looked at again).
    pub(crate) fn plain_str(&self, i: usize) -> Option<&'a str> {
        let n = &self.nodes[i];
        n.plain.then(|| self.text(n.val + 1, n.val_end - 1))
    }

    /// The members of the record itself.
    pub(crate) fn top(&self) -> std::ops::Range<usize> {
        0..self.nodes.len()
    }

    /// The members of the object at node `i`; `None` when it is not an
    /// object.
    pub(crate) fn children(&self, i: usize) -> Option<std::ops::Range<usize>> {
        let n = &self.nodes[i];
        (self.b[n.val as usize] == b'{').then(|| i + 1..n.next as usize)
    }

    /// The members in `level`, in record order.
    #[cfg(test)]
    pub(crate) fn members(
        &self,
        level: std::ops::Range<usize>,
    ) -> impl Iterator<Item = usize> + 'a {
        let nodes = self.nodes;
        let mut i = level.start;
        std::iter::from_fn(move || {
            (i < level.end).then(|| {
                let at = i;
                i = nodes[i].next as usize;
                at
            })
        })
    }

    /// The last member named `key` in `level` (a repeated key means the
    /// last one, as serde_json's map decides); `word` is its [`key_word`].
    #[inline(always)]
    pub(crate) fn find(
        &self,
        level: std::ops::Range<usize>,
        key: &str,
        word: u64,
    ) -> Option<usize> {
        let key = key.as_bytes();
        let len = key.len() as u32;
        let mut found = None;
        let nodes = &self.nodes[..level.end];
        let mut i = level.start;
        while let Some(n) = nodes.get(i) {
            if n.word == word
                && n.key_len == len
                && (len <= 8 || self.b.get(n.key as usize..(n.key + len) as usize) == Some(key))
            {
                found = Some(i);
            }
            i = n.next as usize;
        }
        found
    }

    /// The raw text of the last top-level member named `key`.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.find(self.top(), key, key_word(key.as_bytes()))
            .map(|i| self.raw(i))
    }

    /// Follows `path` from the record's top level. Inlined where it is
    /// asked (the envelope's fields, a path's first reading in an event):
    /// a call's entry and exit were a tenth of its cost.
    #[inline]
    pub(crate) fn lookup(&self, path: &super::FieldPath) -> Found {
        let mut level = self.top();
        let mut at = None;
        let segments = path.segments();
        for (k, (seg, &word)) in segments.iter().zip(path.words.iter()).enumerate() {
            if let Some(i) = at {
                match self.children(i) {
                    Some(c) => level = c,
                    None => return Found::Below(i, segments.len() - k),
                }
            }
            match self.find(level.clone(), seg, word) {
                Some(i) => at = Some(i),
                None => return Found::Missing,
            }
        }
        at.map_or(Found::Missing, Found::At)
    }

    /// Follows `path` below node `first`, the member its first segment
    /// names.
    fn lookup_below(&self, first: usize, path: &super::FieldPath) -> Found {
        let mut at = first;
        let segments = path.segments();
        for (k, (seg, &word)) in segments.iter().zip(path.words.iter()).enumerate().skip(1) {
            let Some(level) = self.children(at) else {
                return Found::Below(at, segments.len() - k);
            };
            match self.find(level, seg, word) {
                Some(i) => at = i,
                None => return Found::Missing,
            }
        }
        Found::At(at)
    }
}

/// Reads `bytes` into `into` when it is one JSON object (surrounding white
/// space allowed) whose keys outside arrays have no escapes, and no longer
/// than 4 GiB; `None` otherwise. Top-level members with `watch`'s keys are
/// noted on the way ([`Doc::watched`]).
pub(crate) fn object(bytes: &[u8], into: &mut Doc, watch: Watch) -> Option<()> {
    into.nodes.clear();
    u32::try_from(bytes.len()).ok()?;
    let mut s = Scanner {
        b: bytes,
        i: 0,
        nodes: std::mem::take(&mut into.nodes),
        record: true,
        arrays: 0,
        plain: false,
        watch,
        watched: [u32::MAX; WATCHED],
    };
    s.ws();
    let read = s.members(&mut |_, _| Some(()));
    s.ws();
    into.nodes = std::mem::take(&mut s.nodes);
    into.watched = s.watched;
    read.filter(|()| s.i == s.b.len())
}

/// Calls `each(key, raw value)` for every member, in record order, of the
/// object that is all of `bytes`; `None` when `bytes` is not such an
/// object (or not UTF-8) or `each` returns `None`.
fn members_of<'a>(
    bytes: &'a [u8],
    mut each: impl FnMut(&'a str, &'a str) -> Option<()>,
) -> Option<()> {
    let mut s = Scanner {
        b: bytes,
        i: 0,
        nodes: Vec::new(),
        record: false,
        arrays: 0,
        plain: false,
        watch: Watch::NONE,
        watched: [u32::MAX; WATCHED],
    };
    s.ws();
    s.members(&mut each)?;
    s.ws();
    (s.i == s.b.len()).then_some(())
}

/// The content of a raw JSON string without escapes (`"abc"` → `abc`);
/// `None` for other values and for strings with escapes.
pub(crate) fn plain_str(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    // A plain loop, not `contains` (memchr): these strings are short
    // (types, ids, times, a page), and memchr's set-up costs more than
    // the search.
    (!inner.bytes().any(|b| b == b'\\')).then_some(inner)
}

/// A member's raw text (checked by the scan) as serde_json parses it,
/// built without serde_json where the text is plain: strings without
/// escapes, integers, `true`, `false`, `null`, and objects of those.
/// Anything else (floats, arrays, escapes) goes through serde_json.
pub(crate) fn value(raw: &str) -> Option<serde_json::Value> {
    use serde_json::Value;
    let fast = match *raw.as_bytes().first()? {
        b'"' => plain_str(raw).map(|s| Value::String(s.to_owned())),
        b'{' => {
            let mut map = serde_json::Map::new();
            // A repeated key: the last one stands, as in serde_json.
            members_of(raw.as_bytes(), |k, v| {
                map.insert(k.to_owned(), value(v)?);
                Some(())
            })
            .map(|()| Value::Object(map))
        }
        // Integers only; fractions go to serde_json, as they always have.
        b'-' | b'0'..=b'9' => match plain_number(raw) {
            Some(Plain::Int(i)) => Some(Value::from(i)),
            _ => None,
        },
        _ => match raw {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            "null" => Some(Value::Null),
            _ => None,
        },
    };
    fast.or_else(|| serde_json::from_str(raw).ok())
}

/// A raw JSON number read without serde_json, in one pass, where that is
/// exact. See [`plain_number`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Plain {
    Int(i64),
    Float(f64),
}

/// A raw JSON number (checked by the scan) as serde_json reads it, where
/// that is simple: an integer written as serde_json prints it (no sign on
/// zero, no leading zero, at most 18 digits), or a decimal with a
/// fraction, no exponent and at most 18 digits in all, computed as
/// serde_json computes it: the digits read as one integer, then divided by
/// ten to the number of fraction digits (serde_json's own steps, so the
/// same `f64` to the bit). `None` for other text (exponents, longer
/// numbers, `-0`), which serde_json reads.
#[inline]
pub(crate) fn plain_number(raw: &str) -> Option<Plain> {
    const POW10: [f64; 19] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18,
    ];
    let bytes = raw.as_bytes();
    let (negative, digits) = match bytes.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, bytes),
    };
    let mut significand: u64 = 0;
    // Where the '.' is, if any.
    let mut point = None;
    for (i, &b) in digits.iter().enumerate() {
        match b {
            b'0'..=b'9' => significand = significand * 10 + u64::from(b - b'0'),
            b'.' if point.is_none() && i > 0 => point = Some(i),
            _ => return None,
        }
        // 18 digits (and the point) at most: no overflow, and exact.
        if i >= 18 + usize::from(point.is_some()) {
            return None;
        }
    }
    match point {
        None => {
            let canonical = !digits.is_empty()
                && (digits.len() == 1 || digits[0] != b'0')
                && !(negative && significand == 0);
            // At most 18 digits: within i64.
            let n = significand as i64;
            canonical.then_some(Plain::Int(if negative { -n } else { n }))
        }
        Some(p) => {
            let fraction = digits.len() - p - 1;
            if fraction == 0 {
                return None;
            }
            let f = significand as f64 / POW10[fraction];
            Some(Plain::Float(if negative { -f } else { f }))
        }
    }
}

/// Bytes that end a run of plain string characters: the quote, the
/// backslash, the control characters (invalid unescaped) and the bytes of
/// non-ASCII characters (checked as UTF-8 apart).
const SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    b = 0x80;
    while b < 0x100 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// How many bytes at the start of `rest` are plain string characters
/// (not [`SPECIAL`]): sixteen at a time where the CPU compares sixteen
/// bytes at once, then eight, then byte by byte.
#[inline(always)]
fn plain_run(rest: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit of each byte below `n` (exact for the lowest such byte;
    // bytes above it may be flagged falsely, which the lowest-bit pick
    // below never looks at).
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    let mut i = 0;
    // Most strings (keys, types, ids) end within their first sixteen
    // bytes, and a record goes on past them: one compare finds the end.
    #[cfg(target_arch = "x86_64")]
    while i + 16 <= rest.len() {
        use std::arch::x86_64::*;
        // SAFETY: the 16 bytes at `i` are inside `rest` (checked above),
        // the load is unaligned, and SSE2 is part of every x86_64 CPU.
        let special = unsafe {
            let v = _mm_loadu_si128(rest.as_ptr().add(i).cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Signed: bytes from 0x80 up are negative, so one compare
            // finds the control characters and the non-ASCII bytes.
            let low_or_high = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), low_or_high)) as u32
        };
        if special != 0 {
            return i + special.trailing_zeros() as usize;
        }
        i += 16;
    }
    while let Some(chunk) = rest.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let special = below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            | below(w, 0x20)
            | (w & HIGH);
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + rest[i..]
        .iter()
        .position(|&b| SPECIAL[b as usize])
        .unwrap_or(rest.len() - i)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// Object members read so far, when `record`: those outside arrays.
    nodes: Vec<Node>,
    record: bool,
    /// How many arrays the scan is inside.
    arrays: u32,
    /// Whether the value just scanned is a string without escapes.
    plain: bool,
    /// Top-level keys to note, and the last member noted for each.
    watch: Watch,
    watched: [u32; WATCHED],
}

impl<'a> Scanner<'a> {
    /// The text of `from..to`, which the scan has checked: every string
    /// in it was checked as UTF-8 and everything else JSON allows outside
    /// strings is ASCII.
    fn text(&self, from: usize, to: usize) -> &'a str {
        let bytes = &self.b[from..to];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: a range the scanner has accepted is valid UTF-8 (above);
        // the property tests compare every accepted record with serde_json,
        // which checks UTF-8 itself.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// The next byte after any white space (not stepped past). A compact
    /// record has none to skip, which the first compare settles: a
    /// [`Scanner::ws`] and then a [`Scanner::peek`] read the byte twice.
    #[inline(always)]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        if c > b' ' {
            return Some(c);
        }
        self.ws();
        self.peek()
    }

    /// Steps past `c` after any white space.
    #[inline(always)]
    fn eat_next(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then(|| self.i += 1)
    }

    /// The outer object, handing each member to `each`.
    fn members(&mut self, each: &mut impl FnMut(&'a str, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat_next(b'}').is_some() {
            return Some(());
        }
        loop {
            self.eat_next(b'"')?;
            let (start, end, escaped) = self.string_body()?;
            if escaped {
                return None;
            }
            let key = self.text(start, end);
            self.eat_next(b':')?;
            self.ws();
            let at = self.i;
            let node = self.open(start, end);
            if let Some(n) = node {
                self.note(n);
            }
            self.value(1)?;
            self.close(node);
            each(key, self.text(at, self.i))?;
            match self.next()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Records a member whose key is `key..key_end` and whose value starts
    /// here, when recording and outside arrays.
    #[inline(always)]
    fn open(&mut self, key: usize, key_end: usize) -> Option<usize> {
        (self.record && self.arrays == 0).then(|| {
            self.nodes.push(Node {
                word: key_word(&self.b[key..key_end]),
                key: key as u32,
                key_len: (key_end - key) as u32,
                val: self.i as u32,
                val_end: 0,
                next: 0,
                plain: false,
            });
            self.nodes.len() - 1
        })
    }

    /// Notes top-level member `n` against the watched keys.
    #[inline(always)]
    fn note(&mut self, n: usize) {
        let m = &self.nodes[n];
        for (j, &key) in self.watch.0.iter().enumerate() {
            if key == (m.word, m.key_len) {
                self.watched[j] = n as u32;
            }
        }
    }

    /// Ends the member `open` recorded, its value just scanned.
    #[inline(always)]
    fn close(&mut self, node: Option<usize>) {
        if let Some(n) = node {
            let next = self.nodes.len() as u32;
            let plain = self.plain;
            let m = &mut self.nodes[n];
            m.val_end = self.i as u32;
            m.next = next;
            m.plain = plain;
        }
    }

    /// Skips one value, checking it. A string (most values: every id,
    /// type, time and name) is scanned here, inline where the value is
    /// read; anything else in [`Scanner::other_value`], since a call's
    /// entry and exit cost more than a string's scan.
    #[inline(always)]
    fn value(&mut self, depth: usize) -> Option<()> {
        if self.peek() == Some(b'"') {
            let (_, _, escaped) = self.string()?;
            self.plain = !escaped;
            return Some(());
        }
        self.other_value(depth)
    }

    /// Skips one value that is not a string, checking it.
    fn other_value(&mut self, depth: usize) -> Option<()> {
        let scanned = match self.peek()? {
            b'{' => self.container(depth, b'}', true),
            b'[' => self.container(depth, b']', false),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        };
        // After a container too: a string inside it set the flag.
        self.plain = false;
        scanned
    }

    /// An object (`keyed`) or an array, after checking the depth.
    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.i += 1;
        if self.eat_next(close).is_some() {
            return Some(());
        }
        if !keyed {
            self.arrays += 1;
        }
        loop {
            let mut node = None;
            if keyed {
                self.eat_next(b'"')?;
                let (start, end, escaped) = self.string_body()?;
                if escaped && self.record && self.arrays == 0 {
                    return None;
                }
                self.eat_next(b':')?;
                self.ws();
                node = self.open(start, end);
            } else {
                self.ws();
            }
            self.value(depth + 1)?;
            self.close(node);
            match self.next()? {
                b',' => self.i += 1,
                c if c == close => {
                    self.i += 1;
                    if !keyed {
                        self.arrays -= 1;
                    }
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A string: (content start, content end, has escapes).
    #[inline(always)]
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.eat(b'"')?;
        self.string_body()
    }

    /// [`Scanner::string`] after its opening quote.
    #[inline(always)]
    fn string_body(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.i;
        // Most strings (every key, most values) are plain characters up to
        // the closing quote: one run, one check.
        self.i += plain_run(&self.b[self.i..]);
        if self.peek() == Some(b'"') {
            self.i += 1;
            return Some((start, self.i - 1, false));
        }
        self.string_rest(start)
    }

    /// The rest of a string that is not one plain run: escapes, or an
    /// invalid byte, or the end of the record.
    #[inline(never)]
    fn string_rest(&mut self, start: usize) -> Option<(usize, usize, bool)> {
        let mut escaped = false;
        loop {
            // Plain characters, many at a time.
            self.i += plain_run(self.b.get(self.i..)?);
            match *self.b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some((start, self.i - 1, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match *self.b.get(self.i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let hex = self.b.get(self.i + 2..self.i + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            // Lone surrogates: serde_json's own rules decide.
                            let unit =
                                u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                            if (0xD800..0xE000).contains(&unit) {
                                return None;
                            }
                            self.i += 6;
                        }
                        _ => return None,
                    }
                }
                0..=0x1F => return None,
                // Non-ASCII: the run of bytes >= 0x80 is whole characters
                // (UTF-8 sequences are made of such bytes only, and ASCII
                // stands alone), so the string is UTF-8 when each such
                // run is.
                0x80.. => {
                    let run = self.b[self.i..]
                        .iter()
                        .position(|&b| b < 0x80)
                        .unwrap_or(self.b.len() - self.i);
                    std::str::from_utf8(&self.b[self.i..self.i + run]).ok()?;
                    self.i += run;
                }
                _ => self.i += 1,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - from
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let from = self.i;
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        let exponent = matches!(self.peek(), Some(b'e' | b'E'));
        if exponent {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        // serde_json rejects numbers beyond f64's range; only an exponent
        // or some 300 digits can get there.
        let text = &self.b[from..self.i];
        if exponent || text.len() > 300 {
            let f: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
            if !f.is_finite() {
                return None;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn read(bytes: &[u8]) -> Option<Doc> {
        let mut d = Doc::default();
        object(bytes, &mut d, Watch::NONE).map(|()| d)
    }

    /// What serde_json makes of a record: its members as (key, value).
    fn serde_members(bytes: &[u8]) -> Option<Vec<(String, Value)>> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let Value::Object(m) = v else { return None };
        Some(m.into_iter().collect())
    }

    /// The scanner's members, each value read by [`value`] (and checked
    /// against serde_json's reading of its text).
    fn scanned(bytes: &[u8]) -> Option<Vec<(String, Value)>> {
        let d = read(bytes)?;
        let m = d.on(bytes);
        let mut keys: Vec<&str> = m.members(m.top()).map(|i| m.key(i)).collect();
        keys.sort_unstable();
        keys.dedup();
        Some(
            keys.into_iter()
                .map(|k| {
                    let raw = m.get(k).unwrap();
                    let v = value(raw).expect("raw text is valid JSON");
                    assert_eq!(
                        Some(&v),
                        serde_json::from_str::<Value>(raw).ok().as_ref(),
                        "{raw}"
                    );
                    (k.to_string(), v)
                })
                .collect(),
        )
    }

    #[test]
    fn reads_members_and_declines_what_it_does_not_handle() {
        let rec = br#" {"a": 1, "b": {"c": [true, null, "x\n"]}, "a": "last"} "#;
        let d = read(rec).unwrap();
        let m = d.on(rec);
        assert_eq!(m.get("a"), Some(r#""last""#));
        assert_eq!(m.get("b"), Some(r#"{"c": [true, null, "x\n"]}"#));
        let path = |p: &str| super::super::FieldPath::parse(p).unwrap();
        let Found::At(c) = m.lookup(&path("b.c")) else {
            panic!("b.c is there")
        };
        assert_eq!(m.raw(c), r#"[true, null, "x\n"]"#);
        assert!(matches!(m.lookup(&path("b.c.d")), Found::Below(_, 1)));
        assert!(matches!(m.lookup(&path("b.x")), Found::Missing));
        assert!(read(b"{}").is_some());
        let rec = br#"{"o": {"k": 1, "k": 2}, "l": [{"k": 1}], "n": {"m": {"q": true}, "r": 0}}"#;
        let d = read(rec).unwrap();
        let m = d.on(rec);
        let at = |p: &str| match m.lookup(&path(p)) {
            Found::At(i) => Some(m.raw(i)),
            _ => None,
        };
        assert_eq!(at("o.k"), Some("2"), "the last of a repeated key");
        assert_eq!(at("l.k"), None, "arrays are not looked into");
        assert_eq!(at("n.m.q"), Some("true"));
        assert_eq!(at("n.r"), Some("0"), "a sibling after a nested object");
        assert_eq!(at("o.j"), None);
        // Keys with escapes outside arrays are declined; inside, accepted.
        assert!(read(br#"{"a": {"k\n": 1}}"#).is_none());
        assert!(read(br#"{"a": [{"k\n": 1}]}"#).is_some());
        for bad in [
            &b"[1]"[..],
            b"{\"a\":1,}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":-}",
            b"{\"a\":tru}",
            b"{\"a\":\"\x01\"}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\\n\":1}",
            b"{\"a\":1} x",
            b"{\"a\":1",
            b"{\"a\" 1}",
            b"{\"a\":\xff}",
            b"{\"a\":1e400}",
            // UTF-8 is checked inside strings: a lone continuation byte, a
            // cut sequence, an overlong form, a surrogate, a high byte
            // after valid text, and one outside any string.
            b"{\"a\":\"\x80\"}",
            b"{\"a\":\"x\xc3\"}",
            b"{\"a\":\"\xc0\xaf\"}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"{\"\xc3\xa9\xff\":1}",
            b"{\"a\":1 \xc3\xa9}",
            b"",
        ] {
            assert!(read(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        let rec = "{\"caf\u{e9}\":\"\u{65e5}\u{672c} \u{1F600}\",\"b\":[\"\u{e9}\"]}".as_bytes();
        let d = read(rec).unwrap();
        let m = d.on(rec);
        assert_eq!(m.get("caf\u{e9}"), Some("\"\u{65e5}\u{672c} \u{1F600}\""));
        assert_eq!(m.get("b"), Some("[\"\u{e9}\"]"));
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        assert!(read(deep.as_bytes()).is_none());
        assert_eq!(plain_str(r#""abc""#), Some("abc"));
        assert_eq!(plain_str(r#""a\"c""#), None);
        assert_eq!(plain_str("12"), None);
        for (raw, plain) in [
            ("12", Some(Plain::Int(12))),
            ("-3", Some(Plain::Int(-3))),
            ("0", Some(Plain::Int(0))),
            ("-0", None),
            ("01", None),
            ("1.0", Some(Plain::Float(1.0))),
            ("-0.50", Some(Plain::Float(-0.5))),
            ("1.", None),
            (".5", None),
            ("1.2.3", None),
            ("1e3", None),
            ("1234567890123456789", None),
            (
                "123456789012345678",
                Some(Plain::Int(123_456_789_012_345_678)),
            ),
            (
                "12345678901234567.8",
                Some(Plain::Float(12_345_678_901_234_567.8)),
            ),
            ("12345678901234567.89", None),
        ] {
            assert_eq!(plain_number(raw), plain, "{raw}");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[ -~\u{e9}\u{1F600}\n\"\\\\]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_\u{e9}\u{1F600}]{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn watched_keys_lead_where_the_walk_does() {
        let path = |p: &str| super::super::FieldPath::parse(p).unwrap();
        let paths = [
            path("customer_id"),
            path("type"),
            path("c.id"),
            path("nowhere"),
        ];
        let watch = Watch::of([Some(&paths[0]), Some(&paths[1]), Some(&paths[2]), None]);
        // A longer key sharing the first word and length, before and after
        // the watched one; a repeated key; a nested path.
        for rec in [
            &br#"{"customer_id":"a","customer_ix":"b","type":"t","type":"u","c":{"id":1}}"#[..],
            br#"{"customer_ix":"b","customer_id":"a","c":[1],"c":{"id":2,"id":3}}"#,
            br#"{"customer_ix":"b","c":"x"}"#,
            br#"{}"#,
        ] {
            let mut doc = Doc::default();
            object(rec, &mut doc, watch).unwrap();
            let d = doc.on(rec);
            for (j, p) in paths.iter().enumerate().take(3) {
                let raw = |f: Found| match f {
                    Found::At(i) => format!("at {}", d.raw(i)),
                    Found::Missing => "missing".into(),
                    Found::Below(i, rest) => format!("below {} {rest}", d.raw(i)),
                };
                assert_eq!(
                    raw(doc.watched(d, j, p)),
                    raw(d.lookup(p)),
                    "{p} in {}",
                    String::from_utf8_lossy(rec)
                );
            }
            assert!(matches!(doc.watched(d, 3, &paths[3]), Found::Missing));
        }
    }

    proptest! {
        /// A watched path leads where the walk of the top level does, with
        /// keys repeated and keys sharing their first eight bytes.
        #[test]
        fn watched_paths_agree_with_the_walk(
            members in prop::collection::vec(
                ("(customer_i[dx]|ty|a)", json_value()), 0..8),
            nested in "(customer_i[dx]|ty|a)",
        ) {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
                .collect();
            let rec = format!("{{{}}}", body.join(","));
            let paths = [
                super::super::FieldPath::parse("customer_id").unwrap(),
                super::super::FieldPath::parse("ty").unwrap(),
                super::super::FieldPath::parse(&format!("a.{nested}")).unwrap(),
                super::super::FieldPath::parse("customer_ix").unwrap(),
            ];
            let watch = Watch::of([Some(&paths[0]), Some(&paths[1]), Some(&paths[2]), Some(&paths[3])]);
            let mut doc = Doc::default();
            prop_assume!(object(rec.as_bytes(), &mut doc, watch).is_some());
            let d = doc.on(rec.as_bytes());
            for (j, p) in paths.iter().enumerate() {
                let key = |f: Found| match f {
                    Found::At(i) => (0, i, 0),
                    Found::Missing => (1, 0, 0),
                    Found::Below(i, rest) => (2, i, rest),
                };
                prop_assert_eq!(key(doc.watched(d, j, p)), key(d.lookup(p)), "{} in {}", p, rec);
            }
        }

        /// The word-at-a-time run agrees with the byte table.
        #[test]
        fn plain_run_agrees_with_the_table(bytes in prop::collection::vec(
            prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..0x80, 0x80u8..=0xff], 0..40)) {
            let naive = bytes.iter().position(|&b| SPECIAL[b as usize]).unwrap_or(bytes.len());
            prop_assert_eq!(plain_run(&bytes), naive);
        }

        /// Numbers read in one pass are serde_json's, to the bit: integers
        /// and decimals of any length, with leading and trailing zeros;
        /// whatever is declined, serde_json reads.
        #[test]
        fn plain_numbers_are_serde_json_numbers(
            negative in any::<bool>(),
            int in "0|[1-9][0-9]{0,19}",
            fraction in prop::option::of("[0-9]{1,20}"),
        ) {
            let raw = format!(
                "{}{int}{}",
                if negative { "-" } else { "" },
                fraction.map(|f| format!(".{f}")).unwrap_or_default()
            );
            let serde: serde_json::Number = serde_json::from_str(&raw).unwrap();
            match plain_number(&raw) {
                Some(Plain::Int(i)) => prop_assert_eq!(serde.as_i64(), Some(i), "{}", raw),
                Some(Plain::Float(f)) => {
                    prop_assert!(serde.is_f64(), "{}", raw);
                    prop_assert_eq!(serde.as_f64().map(f64::to_bits), Some(f.to_bits()), "{}", raw);
                }
                None => prop_assert!(
                    raw.len() > 18 || raw == "-0",
                    "{} declined though short", raw
                ),
            }
        }

        /// Every object serde_json writes, compact or pretty, is read with
        /// the same members.
        #[test]
        fn agrees_with_serde_on_valid_objects(
            m in prop::collection::btree_map("[a-z_]{1,6}", json_value(), 0..6),
            pretty in any::<bool>(),
        ) {
            let v = Value::Object(m.into_iter().collect());
            let bytes = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
            prop_assert_eq!(scanned(&bytes), serde_members(&bytes));
        }

        /// Never accepts what serde_json rejects, and reads the same members
        /// from whatever it accepts: records with a byte changed, dropped
        /// or cut off.
        #[test]
        fn never_accepts_what_serde_rejects(
            m in prop::collection::btree_map("[a-z_]{1,6}", json_value(), 1..5),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(b"{}[]\",:\\0123456789.eE+-tfnul \x01\xc3".to_vec()),
            edit in 0u8..3,
        ) {
            let mut bytes = serde_json::to_vec(&Value::Object(m.into_iter().collect())).unwrap();
            let i = at.index(bytes.len());
            match edit {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.truncate(i),
            }
            if let Some(members) = scanned(&bytes) {
                prop_assert_eq!(Some(members), serde_members(&bytes), "{}", String::from_utf8_lossy(&bytes));
            }
        }
    }
}
