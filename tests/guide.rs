//! The CX guide (rules/README.md) stays true: its examples are tested
//! files and its commands run.
//!
//! Three markers, each an HTML comment on the line before a fenced block
//! (invisible when the guide is read on GitHub or in an editor preview):
//!
//! - `<!-- from: rules/X -->`: the block is a verbatim excerpt (whole,
//!   consecutive lines) of that file, so the rule, test or template the
//!   guide shows is the one `forewarn test` runs in CI.
//! - `<!-- run -->` (or `<!-- run: exit N -->`): the block is a shell
//!   script. It runs with `sh -e` in a scratch copy of `rules/` and
//!   `deploy/`, with the `forewarn` just built first on `PATH`, and must
//!   exit 0 (or N).
//! - `<!-- output -->`: every line of the block, except those with `…`,
//!   appears in what the last `run` block printed (stdout and stderr).

mod files;
use files::copy_dir;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[derive(Debug)]
enum Marker {
    From(String),
    Run(i32),
    Output,
}

#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence in the guide.
    line: usize,
    marker: Marker,
    body: String,
}

fn parse_marker(line: &str) -> Option<Marker> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    if let Some(path) = inner.strip_prefix("from:") {
        return Some(Marker::From(path.trim().to_string()));
    }
    if inner == "run" {
        return Some(Marker::Run(0));
    }
    if let Some(code) = inner.strip_prefix("run: exit") {
        return Some(Marker::Run(code.trim().parse().expect("run: exit N")));
    }
    (inner == "output").then_some(Marker::Output)
}

/// The marked fenced blocks of a Markdown text, in order.
fn marked_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(marker) = parse_marker(lines[i]) else {
            i += 1;
            continue;
        };
        let fence_at = i + 1;
        let fence = lines
            .get(fence_at)
            .map(|l| l.trim_start())
            .filter(|l| l.starts_with("```"))
            .unwrap_or_else(|| {
                panic!(
                    "rules/README.md:{}: a marker must be followed by a fenced block",
                    i + 1
                )
            });
        let indent = lines[fence_at].len() - fence.len();
        let mut body = Vec::new();
        let mut j = fence_at + 1;
        while j < lines.len() && !lines[j].trim_start().starts_with("```") {
            body.push(lines[j].get(indent..).unwrap_or(lines[j].trim_start()));
            j += 1;
        }
        assert!(
            j < lines.len(),
            "rules/README.md:{}: unclosed block",
            fence_at + 1
        );
        out.push(Block {
            line: fence_at + 1,
            marker,
            body: body.join("\n"),
        });
        i = j + 1;
    }
    out
}

/// Whether `excerpt`'s lines appear as consecutive whole lines of `file`.
fn is_excerpt(excerpt: &str, file: &str) -> bool {
    let want: Vec<&str> = excerpt.lines().map(str::trim_end).collect();
    let have: Vec<&str> = file.lines().map(str::trim_end).collect();
    !want.is_empty() && have.windows(want.len()).any(|w| w == want.as_slice())
}

#[test]
fn markers_are_found_with_their_blocks() {
    let text = "intro\n<!-- from: rules/a.toml -->\n```toml\nx = 1\ny = 2\n```\n\n  <!-- run: exit 1 -->\n  ```sh\n  forewarn check\n  ```\n<!-- output -->\n```\nok\n```\n```sh\nnot marked\n```\n";
    let blocks = marked_blocks(text);
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    assert!(matches!(&blocks[0].marker, Marker::From(p) if p == "rules/a.toml"));
    assert_eq!(blocks[0].body, "x = 1\ny = 2");
    assert_eq!(blocks[0].line, 3);
    assert!(matches!(blocks[1].marker, Marker::Run(1)));
    assert_eq!(blocks[1].body, "forewarn check");
    assert!(matches!(blocks[2].marker, Marker::Output));
    assert!(is_excerpt("b\nc", "a\nb\nc\nd"));
    assert!(!is_excerpt("b\nd", "a\nb\nc\nd"));
}

#[test]
fn the_guide_shows_tested_files_and_commands_that_work() {
    let guide_path = root().join("rules/README.md");
    let guide = std::fs::read_to_string(&guide_path).unwrap();
    let blocks = marked_blocks(&guide);
    let excerpts = blocks
        .iter()
        .filter(|b| matches!(b.marker, Marker::From(_)))
        .count();
    let runs = blocks
        .iter()
        .filter(|b| matches!(b.marker, Marker::Run(_)))
        .count();
    assert!(
        excerpts >= 5 && runs >= 5,
        "the guide's walkthrough should show its files and run its commands ({excerpts} excerpts, {runs} runs)"
    );

    let scratch = tempfile::tempdir().unwrap();
    copy_dir(&root().join("rules"), &scratch.path().join("rules"));
    copy_dir(&root().join("deploy"), &scratch.path().join("deploy"));
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_forewarn")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut failures = Vec::new();
    let mut last_output: Option<(usize, String)> = None;
    for b in &blocks {
        let at = format!("rules/README.md:{}", b.line);
        match &b.marker {
            Marker::From(file) => match std::fs::read_to_string(root().join(file)) {
                Ok(text) if is_excerpt(&b.body, &text) => {}
                Ok(_) => failures.push(format!(
                    "{at}: this block is not a verbatim excerpt of {file}; copy it from the file again"
                )),
                Err(e) => failures.push(format!("{at}: cannot read {file}: {e}")),
            },
            Marker::Run(code) => {
                let out = Command::new("sh")
                    .arg("-ec")
                    .arg(&b.body)
                    .current_dir(scratch.path())
                    .env("PATH", &path)
                    .env("NO_COLOR", "1")
                    .env_remove("FOREWARN_LOG")
                    .output()
                    .expect("sh runs");
                let printed = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                if out.status.code() != Some(*code) {
                    failures.push(format!(
                        "{at}: exited {:?}, the guide expects {code}:\n{}\n--- printed:\n{printed}",
                        out.status.code(),
                        b.body
                    ));
                }
                last_output = Some((b.line, printed));
            }
            Marker::Output => {
                let Some((run_line, printed)) = &last_output else {
                    failures.push(format!("{at}: an output block needs a run block before it"));
                    continue;
                };
                let printed: Vec<&str> = printed.lines().map(str::trim_end).collect();
                for want in b.body.lines().map(str::trim_end) {
                    if want.is_empty() || want.contains('…') {
                        continue;
                    }
                    if !printed.contains(&want) {
                        failures.push(format!(
                            "{at}: the commands at rules/README.md:{run_line} no longer print this line:\n  {want}\n--- they printed:\n{}",
                            printed.join("\n")
                        ));
                        break;
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
