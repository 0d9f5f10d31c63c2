//! Catalogs: reference tables in `rules/catalogs/*.toml` that `match`
//! rules join, e.g. the known-bug list. The file name (without `.toml`) is
//! the catalog name; each `[[entry]]` needs an `id` and a `matches` CEL
//! condition over `event`. Every other field is data for templates and
//! `once_per` (`entry.title`, `entry.workaround`, …).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::diagnostics::Diagnostic;
use super::expr::Expr;

#[derive(Debug)]
pub struct CatalogEntry {
    pub id: String,
    pub matches: Expr,
    /// Every field of the entry (including `id`), as the template sees it.
    pub fields: serde_json::Value,
}

#[derive(Debug)]
pub struct Catalog {
    pub name: String,
    pub entries: Vec<Arc<CatalogEntry>>,
    /// Field names present in every entry: what `entry.X` may name.
    pub common_fields: BTreeSet<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    entry: Vec<Spanned<toml::Table>>,
}

/// Loads every catalog in `dir` (which may be missing: no catalogs).
pub fn load_catalogs(dir: &Path, diags: &mut Vec<Diagnostic>) -> BTreeMap<String, Arc<Catalog>> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<_> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for file in files {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let source = match std::fs::read_to_string(&file) {
            Ok(s) => s,
            Err(e) => {
                diags.push(Diagnostic::file(
                    &file,
                    format!("cannot read the catalog: {e}"),
                ));
                continue;
            }
        };
        let raw: RawCatalog = match toml::from_str(&source) {
            Ok(r) => r,
            Err(e) => {
                diags.push(
                    Diagnostic::at(
                        &file,
                        &source,
                        e.span().map_or(0, |s| s.start),
                        e.message().trim(),
                    )
                    .help("a catalog is a list of [[entry]] tables, each with id and matches"),
                );
                continue;
            }
        };
        let before = diags.len();
        let mut entries = Vec::new();
        let mut ids = BTreeSet::new();
        let mut common: Option<BTreeSet<String>> = None;
        for spanned in raw.entry {
            let span = spanned.span();
            let table = spanned.into_inner();
            let at = |key: &str| {
                let region = &source[span.start.min(source.len())..span.end.min(source.len())];
                span.start + region.find(key).unwrap_or(0)
            };
            let id = match table.get("id").and_then(|v| v.as_str()) {
                Some(id) if !id.trim().is_empty() => id.trim().to_string(),
                _ => {
                    diags.push(
                        Diagnostic::at(&file, &source, span.start, "the entry has no id")
                            .help("add id = \"BUG-1423\" (a unique text id) to the entry"),
                    );
                    continue;
                }
            };
            if !ids.insert(id.clone()) {
                diags.push(
                    Diagnostic::at(
                        &file,
                        &source,
                        at("id"),
                        format!("entry id {id:?} is used twice in catalog {name:?}"),
                    )
                    .help("give each entry its own id"),
                );
            }
            let matches = match table.get("matches").and_then(|v| v.as_str()) {
                None => {
                    diags.push(
                        Diagnostic::at(&file, &source, span.start, format!("entry {id:?} has no matches condition"))
                            .help("add matches = '<CEL condition over event>', e.g. matches = 'event.app.platform == \"ios\"'"),
                    );
                    continue;
                }
                Some(m) => match Expr::compile(m) {
                    Ok(e) => e,
                    Err(e) => {
                        let start = at("matches");
                        let quote = source[start..]
                            .find(['"', '\''])
                            .map_or(start, |q| start + q + 1);
                        diags.push(
                            Diagnostic::at(&file, &source, quote + e.offset, e.message)
                                .help(e.help),
                        );
                        continue;
                    }
                },
            };
            let keys: BTreeSet<String> =
                table.keys().filter(|k| *k != "matches").cloned().collect();
            common = Some(match common {
                None => keys,
                Some(c) => c.intersection(&keys).cloned().collect(),
            });
            let mut fields = table;
            fields.remove("matches");
            let fields = serde_json::to_value(&fields).unwrap_or_default();
            entries.push(Arc::new(CatalogEntry {
                id,
                matches,
                fields,
            }));
        }
        if entries.is_empty() && diags.len() == before {
            diags.push(
                Diagnostic::file(&file, format!("catalog {name:?} has no entry"))
                    .help("add [[entry]] tables with id and matches, or remove the file"),
            );
        }
        if diags.len() == before {
            out.insert(
                name.clone(),
                Arc::new(Catalog {
                    name,
                    entries,
                    common_fields: common.unwrap_or_default(),
                }),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_entries_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("known_bugs.toml"),
            r#"
[[entry]]
id = "BUG-1"
title = "Freeze"
matches = 'semver_match(event.app.version, ">=4.2.0, <4.2.3")'

[[entry]]
id = "BUG-2"
title = "Crash"
workaround = "Restart"
matches = 'event.app.platform == "android"'
"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("bad.toml"),
            "[[entry]]\nid = \"X\"\nmatches = 'event.a >'\n\n[[entry]]\ntitle = \"no id\"\nmatches = 'true'\n",
        )
        .unwrap();
        let mut d = Vec::new();
        let cats = load_catalogs(dir.path(), &mut d);
        let bugs = &cats["known_bugs"];
        assert_eq!(bugs.entries.len(), 2);
        assert_eq!(bugs.entries[1].fields["workaround"], "Restart");
        assert!(bugs.entries[0].fields.get("matches").is_none());
        assert_eq!(
            bugs.common_fields
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["id", "title"]
        );
        assert!(!cats.contains_key("bad"));
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("bad.toml:3:") && t.contains("not valid CEL")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("bad.toml:5:") && t.contains("no id")),
            "{text:?}"
        );
    }
}
