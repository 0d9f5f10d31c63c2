//! Stored triggers, kept small. An open absence episode keeps only the
//! trigger fields its rule can still use (templates, until/cancel
//! conditions, key, deadline, once_per, the recipient address): millions of
//! episodes must fit in memory.

use serde_json::{Map, Value};

use crate::event::{Event, FieldPath, Millis};
use crate::rules::{DeadlineSpec, KeyField, OncePerField, Rule, RuleKind};

/// The trigger fields an absence rule needs after the trigger; `None`
/// keeps the whole payload (a template or condition uses it whole).
pub fn retained_paths(rule: &Rule, always: &[FieldPath]) -> Option<Vec<FieldPath>> {
    let RuleKind::Absence(a) = &rule.kind else {
        return Some(Vec::new());
    };
    let mut paths = rule.trigger_fields.clone()?;
    paths.extend(always.iter().cloned());
    for k in &rule.key {
        if let KeyField::Path(p) = k {
            paths.push(p.clone());
        }
    }
    for f in &rule.once_per {
        if let OncePerField::Event(KeyField::Path(p)) = f {
            paths.push(p.clone());
        }
    }
    if let DeadlineSpec::Field { path, .. } = &a.deadline {
        paths.push(path.clone());
    }
    paths.sort_by_key(|p| p.to_string());
    paths.dedup();
    Some(paths)
}

/// A copy of `payload` with only `paths` (whole subtrees below them), in
/// the same shape along each path: parent objects are kept even when the
/// leaf is missing, and a non-object on the way is copied whole. So
/// `has(event.a.b)` and `trigger.a.b | default(…)` see what they would
/// see on the whole payload.
pub fn project(payload: &Value, paths: &[FieldPath]) -> Value {
    let mut out = Map::new();
    for path in paths {
        copy_path(payload, &mut out, path.segments());
    }
    Value::Object(out)
}

fn copy_path(src: &Value, dst: &mut Map<String, Value>, segments: &[String]) {
    let (Some((first, rest)), Value::Object(src)) = (segments.split_first(), src) else {
        return;
    };
    let Some(v) = src.get(first) else {
        return;
    };
    if rest.is_empty() || !v.is_object() {
        dst.insert(first.clone(), v.clone());
        return;
    }
    let child = dst
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(child) = child {
        copy_path(v, child, rest);
    }
}

/// Envelope: customer, id and the (projected) payload, as MessagePack
/// (about a quarter smaller than JSON: no quotes, colons or braces).
pub fn encode_trigger(event: &Event, fields: Option<&[FieldPath]>) -> Box<[u8]> {
    let projected;
    let payload = match fields {
        Some(f) => {
            projected = project(&event.payload, f);
            &projected
        }
        None => &event.payload,
    };
    rmp_serde::to_vec(&(&event.customer, &event.id, payload))
        .unwrap_or_default()
        .into_boxed_slice()
}

pub fn decode_trigger(bytes: &[u8], kind: &str, time: Millis) -> Option<Event> {
    let (customer, id, payload): (String, Option<String>, Value) =
        rmp_serde::from_slice(bytes).ok()?;
    Some(Event {
        kind: kind.to_string(),
        customer,
        time,
        id,
        payload,
        raw: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_named_subtrees() {
        let payload = json!({"cart": {"total": 42.5, "items": [1, 2], "coupon": "X"}, "customer": {"email": "a@b", "name": "A"}, "noise": "x".repeat(100)});
        let paths: Vec<FieldPath> = [
            "cart.total",
            "cart.items",
            "customer.email",
            "missing.field",
        ]
        .iter()
        .map(|p| FieldPath::parse(p).unwrap())
        .collect();
        assert_eq!(
            project(&payload, &paths),
            json!({"cart": {"total": 42.5, "items": [1, 2]}, "customer": {"email": "a@b"}})
        );
        // Parents of a missing leaf stay; a non-object on the way is copied.
        let p = |s: &str| vec![FieldPath::parse(s).unwrap()];
        assert_eq!(
            project(&json!({"a": {"x": 1}}), &p("a.b")),
            json!({"a": {}})
        );
        assert_eq!(
            project(&json!({"a": "text"}), &p("a.b")),
            json!({"a": "text"})
        );
        assert_eq!(project(&json!({}), &p("a.b")), json!({}));
    }

    #[test]
    fn trigger_envelope_round_trips() {
        let e = Event {
            kind: "checkout_started".into(),
            customer: "c1".into(),
            time: 5,
            id: Some("e1".into()),
            payload: json!({"a": 1, "b": 2}),
            raw: None,
        };
        let only_a = [FieldPath::parse("a").unwrap()];
        let bytes = encode_trigger(&e, Some(&only_a));
        let back = decode_trigger(&bytes, "checkout_started", 5).unwrap();
        assert_eq!(back.customer, "c1");
        assert_eq!(back.id.as_deref(), Some("e1"));
        assert_eq!(back.payload, json!({"a": 1}));
    }
}
