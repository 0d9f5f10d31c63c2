//! Small file and text helpers shared by the command-line tests (kept
//! apart from `harness`, which starts brokers and mail servers).
#![allow(dead_code)] // each test binary uses its own share

use std::path::Path;

/// Copies a folder tree (rules/, deploy/) into a scratch place.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// `text` as the HTML pages' autoescaping (minijinja) writes it.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
        .replace('/', "&#x2f;")
}
