//! `forewarn replay --report FILE.html`: the replay as one self-contained
//! page for a CX lead. Outcomes per rule, messages sent per hour, how long
//! after the trigger a message goes out, what the contact policy and the
//! rules held back, and a few sample messages per rule.
//!
//! The figures are pure functions of the [`ReplayReport`] (tested below);
//! the charts are drawn with plotters' SVG backend and inlined; the page
//! is `report.html`, a minijinja template with HTML autoescaping, built on
//! the message card of [`crate::preview`]. The page loads nothing: its
//! Content-Security-Policy forbids every fetch but inline styles and
//! `data:` images, and it has no scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde::Serialize;

use super::{ReplayDecision, ReplayReport, OUTCOME_COLUMNS};
use crate::config::ChannelConfig;
use crate::event::{format_time, Millis};
use crate::preview::{channel_or_default, MessageView};

const MINUTE: Millis = 60_000;
const HOUR: Millis = 60 * MINUTE;
const DAY: Millis = 24 * HOUR;

// ------------------------------------------------------------- figures

/// Messages that go out per time bucket, per rule.
#[derive(Debug, Clone, PartialEq)]
pub struct SendsOverTime {
    /// Start of the first bucket (a whole hour or day, UTC).
    pub start: Millis,
    /// Bucket length: an hour, or a day for replays longer than a month.
    pub bucket: Millis,
    /// rule → sends per bucket; every rule with a send, same length each.
    pub series: BTreeMap<String, Vec<u64>>,
}

/// The bucket for a period of `span`: an hour, unless that would make
/// more than 31 days of hourly points.
pub fn bucket_for(span: Millis) -> Millis {
    if span > 31 * DAY {
        DAY
    } else {
        HOUR
    }
}

/// Sends (`sent` and `deferred`, at the time they go out) per bucket over
/// `from..=to` (widened to cover every send), one series per rule that
/// sends anything.
pub fn sends_over_time(
    decisions: &[ReplayDecision],
    from: Millis,
    to: Millis,
    bucket: Millis,
) -> SendsOverTime {
    let sends: Vec<(&str, Millis)> = decisions
        .iter()
        .filter_map(|d| d.send_at.map(|t| (d.rule.as_str(), t)))
        .collect();
    let lo = sends.iter().map(|s| s.1).fold(from, Millis::min);
    let hi = sends.iter().map(|s| s.1).fold(to.max(from), Millis::max);
    let start = lo.div_euclid(bucket) * bucket;
    let n = ((hi - start).div_euclid(bucket) + 1) as usize;
    let mut series: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (rule, t) in sends {
        let row = series.entry(rule.to_string()).or_insert_with(|| vec![0; n]);
        row[((t - start) / bucket) as usize] += 1;
    }
    SendsOverTime {
        start,
        bucket,
        series,
    }
}

/// Upper bounds (exclusive) of the trigger-to-send buckets, and their
/// labels; the last bucket has no upper bound.
pub const DELAY_BUCKETS: &[(Millis, &str)] = &[
    (MINUTE, "< 1m"),
    (5 * MINUTE, "1–5m"),
    (15 * MINUTE, "5–15m"),
    (30 * MINUTE, "15–30m"),
    (HOUR, "30m–1h"),
    (2 * HOUR, "1–2h"),
    (6 * HOUR, "2–6h"),
    (12 * HOUR, "6–12h"),
    (DAY, "12–24h"),
    (2 * DAY, "1–2d"),
    (7 * DAY, "2–7d"),
    (Millis::MAX, "≥ 7d"),
];

/// How many delays fall in each of [`DELAY_BUCKETS`].
pub fn delay_histogram(delays: &[Millis]) -> Vec<u64> {
    let mut h = vec![0; DELAY_BUCKETS.len()];
    for &d in delays {
        let i = DELAY_BUCKETS
            .iter()
            .position(|(upper, _)| d < *upper)
            .unwrap_or(DELAY_BUCKETS.len() - 1);
        h[i] += 1;
    }
    h
}

/// The `p`-th percentile (0 < p ≤ 100) of `sorted` by the nearest-rank
/// method: a value that occurs in the data.
pub fn percentile(sorted: &[Millis], p: f64) -> Option<Millis> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Trigger-to-send times of one rule's sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DelayStats {
    pub rule: String,
    pub sends: usize,
    pub median: Option<Millis>,
    pub p90: Option<Millis>,
    pub max: Option<Millis>,
    pub histogram: Vec<u64>,
}

/// Per rule with a send, in rule order: from the trigger event's time to
/// the time the message goes out.
pub fn trigger_to_send(decisions: &[ReplayDecision]) -> Vec<DelayStats> {
    let mut by_rule: BTreeMap<&str, Vec<Millis>> = BTreeMap::new();
    for d in decisions {
        if let Some(t) = d.send_at {
            by_rule
                .entry(d.rule.as_str())
                .or_default()
                .push((t - d.trigger_at).max(0));
        }
    }
    by_rule
        .into_iter()
        .map(|(rule, mut delays)| {
            delays.sort_unstable();
            DelayStats {
                rule: rule.to_string(),
                sends: delays.len(),
                median: percentile(&delays, 50.0),
                p90: percentile(&delays, 90.0),
                max: delays.last().copied(),
                histogram: delay_histogram(&delays),
            }
        })
        .collect()
}

/// Outcomes that keep a fired rule's message from a customer, with what
/// they mean in words. `deferred` is not among them: it delays.
pub const HELD_BACK: &[(&str, &str)] = &[
    ("capped", "the frequency cap ([policy] max_per_customer): the customer already had their share of marketing messages"),
    ("cooldown", "the rule's cooldown: it messaged this customer recently"),
    ("unsubscribed", "consent: the customer said no to this class of message"),
    ("duplicate", "the rule's once_per: this customer already got this message"),
    ("stale", "the rule's stale_after: too late to be useful"),
    ("no_address", "the event had no usable email address"),
    ("render_failed", "the template could not be filled in: forewarn render on one of the rule's events shows why"),
    ("holdout", "the customer is in the rule's control group (holdout_percent)"),
    ("shadow", "the rule is in shadow mode: rendered and logged, never sent"),
];

/// Quiet-hours deferrals of one rule (or all).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Deferrals {
    pub count: u64,
    /// Sum of the delays (decision to send).
    pub total: Millis,
    pub median: Option<Millis>,
}

/// What was held back, per rule and in total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeldBack {
    /// rule → one count per [`HELD_BACK`] outcome.
    pub per_rule: BTreeMap<String, Vec<u64>>,
    pub total: Vec<u64>,
    pub deferred: BTreeMap<String, Deferrals>,
    pub deferred_total: Deferrals,
}

fn deferrals(mut delays: Vec<Millis>) -> Deferrals {
    delays.sort_unstable();
    Deferrals {
        count: delays.len() as u64,
        total: delays.iter().sum(),
        median: percentile(&delays, 50.0),
    }
}

pub fn held_back(report: &ReplayReport) -> HeldBack {
    let mut h = HeldBack {
        total: vec![0; HELD_BACK.len()],
        ..HeldBack::default()
    };
    for (rule, counts) in &report.outcomes {
        let row: Vec<u64> = HELD_BACK
            .iter()
            .map(|(o, _)| counts.get(o).copied().unwrap_or(0))
            .collect();
        for (t, n) in h.total.iter_mut().zip(&row) {
            *t += n;
        }
        h.per_rule.insert(rule.clone(), row);
    }
    let mut delays: BTreeMap<&str, Vec<Millis>> = BTreeMap::new();
    for d in &report.decisions {
        if let ("deferred", Some(t)) = (d.outcome, d.send_at) {
            delays
                .entry(d.rule.as_str())
                .or_default()
                .push(t - d.fired_at);
        }
    }
    h.deferred_total = deferrals(delays.values().flatten().copied().collect());
    h.deferred = delays
        .into_iter()
        .map(|(r, d)| (r.to_string(), deferrals(d)))
        .collect();
    h
}

/// A duration for people: "45 s", "12 min", "3.5 h", "17.5 h", "2 d 4 h".
pub fn human(ms: Millis) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s} s")
    } else if ms < HOUR {
        format!("{} min", (ms + MINUTE / 2) / MINUTE)
    } else if ms < DAY {
        format!("{:.1} h", ms as f64 / HOUR as f64).replace(".0 h", " h")
    } else {
        let h = (ms + HOUR / 2) / HOUR;
        match h % 24 {
            0 => format!("{} d", h / 24),
            r => format!("{} d {r} h", h / 24),
        }
    }
}

// -------------------------------------------------------------- charts

/// Width of every chart in SVG pixels: the page's content width at 1280.
const WIDTH: u32 = 1200;
/// Width of the legend strip at the right of a chart.
const LEGEND: u32 = 220;
const FONT: &str = "sans-serif";
/// plotters-svg writes font sizes divided by 1.24: these are ~14 and ~13 px.
const LABEL_SIZE: f64 = 17.5;
const SMALL_SIZE: f64 = 16.0;

type Plot = Result<(), Box<dyn std::error::Error>>;

fn hex(c: &str) -> RGBColor {
    let v = u32::from_str_radix(c.trim_start_matches('#'), 16).unwrap_or(0);
    RGBColor((v >> 16) as u8, (v >> 8) as u8, v as u8)
}

/// One colour per outcome, the same as the badges of the message card.
pub fn outcome_colour(outcome: &str) -> RGBColor {
    hex(match outcome {
        "sent" => "#15803d",
        "deferred" => "#0e7490",
        "shadow" => "#9ca3af",
        "holdout" => "#7c3aed",
        "capped" => "#ea580c",
        "unsubscribed" => "#dc2626",
        "cooldown" => "#ca8a04",
        "duplicate" => "#2563eb",
        "stale" => "#92400e",
        "no_address" => "#db2777",
        _ => "#1f2937",
    })
}

/// Distinct, readable line colours for rules (tab10), cycled.
fn rule_colour(i: usize) -> RGBColor {
    const TAB10: &[&str] = &[
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
        "#7f7f7f", "#bcbd22",
    ];
    hex(TAB10[i % TAB10.len()])
}

/// A legend in its own strip, so it never covers data.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    entries: &[(String, RGBColor)],
) -> Plot
where
    DB::ErrorType: 'static,
{
    let font = (FONT, LABEL_SIZE).into_font();
    area.draw(&Text::new(
        title.to_string(),
        (8, 16),
        (FONT, LABEL_SIZE).into_font().style(FontStyle::Bold),
    ))?;
    for (i, (label, colour)) in entries.iter().enumerate() {
        let y = 48 + 26 * i as i32;
        area.draw(&Rectangle::new([(8, y - 8), (26, y + 8)], colour.filled()))?;
        let mut text = label.clone();
        if text.chars().count() > 24 {
            text = text.chars().take(23).collect::<String>() + "…";
        }
        area.draw(&Text::new(text, (34, y - 7), font.clone()))?;
    }
    Ok(())
}

/// Room for the longest of `labels` at the label size.
fn label_room(labels: impl Iterator<Item = usize>) -> u32 {
    (labels.max().unwrap_or(4) as f64 * LABEL_SIZE / 1.24 * 0.62) as u32 + 24
}

/// A round upper bound for an axis showing values up to `max`.
fn nice_max(max: u64) -> u64 {
    let m = max.max(1) as f64 * 1.08;
    let step = 10f64.powf(m.log10().floor());
    let n = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|f| f * step)
        .find(|v| *v >= m)
        .unwrap_or(10.0 * step);
    (n.ceil() as u64).max(max + 1)
}

/// Stacked horizontal bars: each rule's decisions by outcome.
pub fn outcomes_chart(
    outcomes: &BTreeMap<String, BTreeMap<&'static str, u64>>,
) -> Result<String, String> {
    let mut svg = String::new();
    let rows: Vec<(&String, &BTreeMap<&str, u64>)> = outcomes.iter().collect();
    let n = rows.len().max(1);
    let height = 110 + 40 * n as u32;
    let present: Vec<&str> = OUTCOME_COLUMNS
        .iter()
        .copied()
        .filter(|o| rows.iter().any(|(_, c)| c.get(o).copied().unwrap_or(0) > 0))
        .collect();
    let max = rows
        .iter()
        .map(|(_, c)| c.values().sum::<u64>())
        .max()
        .unwrap_or(0);
    let mut draw = || -> Plot {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, side) = root.split_horizontally(WIDTH - LEGEND);
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .margin_right(28)
            .x_label_area_size(52)
            .y_label_area_size(label_room(rows.iter().map(|(r, _)| r.len())))
            .build_cartesian_2d(0..nice_max(max), (0..n - 1).into_segmented())?;
        let name = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < rows.len() => rows[rows.len() - 1 - i].0.clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .y_labels(n)
            .y_label_formatter(&name)
            .x_desc("decisions (fired rules), by outcome")
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .draw()?;
        for (i, (_, counts)) in rows.iter().enumerate() {
            let y = rows.len() - 1 - i;
            let mut x = 0;
            for o in OUTCOME_COLUMNS {
                let v = counts.get(o).copied().unwrap_or(0);
                if v == 0 {
                    continue;
                }
                let mut bar = Rectangle::new(
                    [
                        (x, SegmentValue::Exact(y)),
                        (x + v, SegmentValue::Exact(y + 1)),
                    ],
                    outcome_colour(o).filled(),
                );
                bar.set_margin(7, 7, 0, 0);
                chart.draw_series(std::iter::once(bar))?;
                x += v;
            }
        }
        let entries: Vec<(String, RGBColor)> = present
            .iter()
            .map(|o| (o.to_string(), outcome_colour(o)))
            .collect();
        legend(&side, "outcome", &entries)?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("cannot draw the outcomes chart: {e}"))?;
    Ok(svg)
}

/// Tick positions (bucket indexes) for a time axis of `n` buckets from
/// `start`, at most 8 so their labels never touch: every 3, 6 or 12 hours
/// on short periods, else whole days or weeks. Also the step.
fn time_ticks(start: Millis, bucket: Millis, n: usize) -> (Vec<i64>, Millis) {
    let span = bucket * n as i64;
    let step = [
        3 * HOUR,
        6 * HOUR,
        12 * HOUR,
        DAY,
        2 * DAY,
        7 * DAY,
        14 * DAY,
        28 * DAY,
    ]
    .into_iter()
    .find(|s| span / s <= 8)
    .unwrap_or(28 * DAY)
    .max(bucket);
    let first = (start + step - 1).div_euclid(step) * step;
    let ticks = (0..)
        .map(|k| first + k * step)
        .take_while(|t| *t < start + span)
        .map(|t| (t - start) / bucket)
        .collect();
    (ticks, step)
}

/// "Mon 16 Nov" at midnight; the time of day between (short periods).
fn time_label(t: Millis) -> String {
    let Ok(ts) = jiff::Timestamp::from_millisecond(t) else {
        return String::new();
    };
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC);
    if dt.hour() == 0 && dt.minute() == 0 {
        dt.strftime("%a %d %b").to_string()
    } else {
        dt.strftime("%H:%M").to_string()
    }
}

/// Messages sent per hour (or day): one panel per rule, one above the
/// other on the same time axis, each scaled to its own peak, so a rule
/// with few messages is as readable as a busy one and no line hides
/// another.
pub fn sends_chart(s: &SendsOverTime) -> Result<String, String> {
    const PANEL: u32 = 124;
    const AXIS: u32 = 64;
    let mut svg = String::new();
    let n = s.series.values().map(Vec::len).max().unwrap_or(1);
    let k = s.series.len().max(1);
    let height = PANEL * k as u32 + AXIS + 8;
    let (ticks, _) = time_ticks(s.start, s.bucket, n);
    let per = if s.bucket == DAY { "day" } else { "hour" };
    let mut draw = || -> Plot {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.margin(8, 0, 12, 40);
        let breaks: Vec<u32> = (1..k as u32).map(|i| i * PANEL).collect();
        let panels = root.split_by_breakpoints(Vec::<u32>::new(), breaks);
        let label = |i: &i64| time_label(s.start + i * s.bucket);
        for (i, ((rule, counts), area)) in s.series.iter().zip(&panels).enumerate() {
            let last = i + 1 == k;
            let peak = counts.iter().copied().max().unwrap_or(0);
            let total: u64 = counts.iter().sum();
            let colour = rule_colour(i);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("{rule}: {total} messages, at most {peak} in one {per}"),
                    (FONT, LABEL_SIZE).into_font().color(&colour.mix(0.95)),
                )
                .margin_top(4)
                .margin_bottom(if last { 0 } else { 10 })
                .x_label_area_size(if last { AXIS } else { 0 })
                .y_label_area_size(72)
                .build_cartesian_2d(
                    (0..(n as i64 - 1).max(1)).with_key_points(ticks.clone()),
                    0..nice_max(peak),
                )?;
            let mut mesh = chart.configure_mesh();
            mesh.light_line_style(WHITE)
                .bold_line_style(RGBColor(229, 231, 235))
                .y_labels(3)
                .y_desc(format!("per {per}"))
                .label_style((FONT, SMALL_SIZE))
                .axis_desc_style((FONT, SMALL_SIZE));
            if last {
                mesh.x_label_formatter(&label)
                    .x_desc("time (UTC) when the message goes out")
                    .x_label_style((FONT, LABEL_SIZE))
                    .axis_desc_style((FONT, LABEL_SIZE));
            } else {
                mesh.x_label_formatter(&|_| String::new());
            }
            mesh.draw()?;
            chart.draw_series(
                AreaSeries::new(
                    counts.iter().enumerate().map(|(x, y)| (x as i64, *y)),
                    0,
                    colour.mix(0.25),
                )
                .border_style(colour.stroke_width(2)),
            )?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("cannot draw the sends chart: {e}"))?;
    Ok(svg)
}

/// Grouped bars: each rule's share of sends per trigger-to-send bucket.
pub fn delay_chart(stats: &[DelayStats]) -> Result<String, String> {
    let mut svg = String::new();
    let nb = DELAY_BUCKETS.len();
    let k = stats.len().max(1);
    let mut draw = || -> Plot {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, side) = root.split_horizontally(WIDTH - LEGEND);
        // Each bucket is UNIT wide on the x axis: room for one bar per rule.
        const UNIT: i64 = 120;
        let centres: Vec<i64> = (0..nb as i64).map(|b| b * UNIT + UNIT / 2).collect();
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .margin_right(28)
            .x_label_area_size(56)
            .y_label_area_size(72)
            .build_cartesian_2d((0..nb as i64 * UNIT).with_key_points(centres), 0f64..100f64)?;
        let label = |x: &i64| {
            DELAY_BUCKETS
                .get((x / UNIT) as usize)
                .map_or(String::new(), |b| b.1.to_string())
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(229, 231, 235))
            .x_label_formatter(&label)
            .y_label_formatter(&|y| format!("{y:.0}%"))
            .x_desc("time from the trigger event to the message going out")
            .y_desc("share of the rule's messages")
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .draw()?;
        let w = (UNIT * 8 / 10 / k as i64).max(1);
        let mut entries = Vec::new();
        for (j, st) in stats.iter().enumerate() {
            let colour = rule_colour(j);
            let total = st.sends.max(1) as f64;
            chart.draw_series(
                st.histogram
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(b, c)| {
                        let x0 = b as i64 * UNIT + UNIT / 10 + j as i64 * w;
                        Rectangle::new(
                            [(x0, 0.0), (x0 + w, 100.0 * *c as f64 / total)],
                            colour.filled(),
                        )
                    }),
            )?;
            entries.push((st.rule.clone(), colour));
        }
        legend(&side, "rule", &entries)?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("cannot draw the trigger-to-send chart: {e}"))?;
    Ok(svg)
}

// ---------------------------------------------------------------- page

/// What the page says about where the replay's inputs came from.
#[derive(Debug, Clone)]
pub struct Facts {
    pub events_file: PathBuf,
    pub rules_dir: PathBuf,
    pub config: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    rule: String,
    fired: u64,
    cells: Vec<u64>,
}

#[derive(Serialize)]
struct DelayRow {
    rule: String,
    sends: usize,
    median: String,
    p90: String,
    max: String,
}

#[derive(Serialize)]
struct HeldRow {
    rule: String,
    cells: Vec<u64>,
    removed: u64,
    deferred: u64,
    deferred_total: String,
    deferred_median: String,
}

#[derive(Serialize)]
struct RuleSamples {
    rule: String,
    messages: Vec<MessageView>,
    /// Why a rule has no sample.
    none: Option<String>,
}

/// An outcome for a narrow column heading: it may break after `_`.
fn breakable(outcome: &str) -> String {
    outcome.replace('_', "_\u{200b}")
}

fn opt_human(ms: Option<Millis>) -> String {
    match ms {
        None => "–".into(),
        Some(0) => "at once".into(),
        Some(t) => human(t),
    }
}

/// The whole page. `channels`: the daemon config's, to show samples as
/// their channel sends them (without, as emails).
pub fn page(
    report: &ReplayReport,
    facts: &Facts,
    channels: Option<&BTreeMap<String, ChannelConfig>>,
) -> Result<String, String> {
    let from = report.first_event.unwrap_or(0);
    let to = report.end.or(report.last_event).unwrap_or(from);
    let sends = sends_over_time(&report.decisions, from, to, bucket_for(to - from));
    let delays = trigger_to_send(&report.decisions);
    let held = held_back(report);

    let rows: Vec<Row> = report
        .outcomes
        .iter()
        .map(|(rule, counts)| Row {
            rule: rule.clone(),
            fired: counts.values().sum(),
            cells: OUTCOME_COLUMNS
                .iter()
                .map(|c| counts.get(c).copied().unwrap_or(0))
                .collect(),
        })
        .collect();
    let totals = Row {
        rule: "all rules".into(),
        fired: rows.iter().map(|r| r.fired).sum(),
        cells: (0..OUTCOME_COLUMNS.len())
            .map(|i| rows.iter().map(|r| r.cells[i]).sum())
            .collect(),
    };
    let delay_rows: Vec<DelayRow> = delays
        .iter()
        .map(|d| DelayRow {
            rule: d.rule.clone(),
            sends: d.sends,
            median: opt_human(d.median),
            p90: opt_human(d.p90),
            max: opt_human(d.max),
        })
        .collect();
    let held_row = |rule: &str, cells: &[u64], d: &Deferrals| HeldRow {
        rule: rule.to_string(),
        cells: cells.to_vec(),
        removed: cells.iter().sum(),
        deferred: d.count,
        deferred_total: if d.count == 0 {
            "–".into()
        } else {
            human(d.total)
        },
        deferred_median: opt_human(d.median),
    };
    let none = Deferrals::default();
    let held_rows: Vec<HeldRow> = held
        .per_rule
        .iter()
        .map(|(r, c)| held_row(r, c, held.deferred.get(r).unwrap_or(&none)))
        .collect();
    let held_total = held_row("all rules", &held.total, &held.deferred_total);

    let mut samples = Vec::new();
    for (rule, counts) in &report.outcomes {
        let mut messages = Vec::new();
        for s in report.samples.get(rule).into_iter().flatten() {
            let cfg = channel_or_default(channels, &s.notification.channel);
            let view = MessageView::new(&s.notification, &cfg, s.outcome, None)
                .map_err(|e| format!("cannot show a sample of rule {rule}: {e}"))?;
            messages.push(view);
        }
        let none = messages.is_empty().then(|| {
            if counts.values().sum::<u64>() == 0 {
                "It never fired on these events.".to_string()
            } else {
                "It fired, but no message would have been sent (see the outcomes above)."
                    .to_string()
            }
        });
        samples.push(RuleSamples {
            rule: rule.clone(),
            messages,
            none,
        });
    }

    let quiet: Vec<&String> = report
        .outcomes
        .keys()
        .filter(|r| !sends.series.contains_key(*r))
        .collect();
    let charts = (
        outcomes_chart(&report.outcomes)?,
        (!sends.series.is_empty())
            .then(|| sends_chart(&sends))
            .transpose()?,
        (!delays.is_empty())
            .then(|| delay_chart(&delays))
            .transpose()?,
    );
    let safe = minijinja::Value::from_safe_string;
    let period = match (report.first_event, report.last_event) {
        (Some(a), Some(b)) => format!(
            "{} to {} ({})",
            format_time(a),
            format_time(b),
            human(b - a)
        ),
        _ => "no events".to_string(),
    };
    let ctx = minijinja::context! {
        period,
        end => report.end.filter(|e| Some(*e) != report.last_event).map(format_time),
        events => report.events,
        invalid => report.invalid.len(),
        invalid_lines => report.invalid.iter().take(10).map(|(l, r)| format!("line {l}: {r}")).collect::<Vec<_>>(),
        late => report.late_events,
        still_open => report.still_open,
        missing_key => report.missing_key.iter().map(|(r, n)| format!("rule {r}: {n} trigger(s) without a key or deadline field opened nothing")).collect::<Vec<_>>(),
        rule_errors => report.rule_errors.iter().map(|(r, n)| format!("rule {r}: {n} condition error(s)")).collect::<Vec<_>>(),
        events_file => facts.events_file.display().to_string(),
        rules_dir => facts.rules_dir.display().to_string(),
        config => facts.config.as_ref().map(|c| c.display().to_string()),
        generated => format_time(crate::event::now_millis()),
        columns => OUTCOME_COLUMNS.iter().map(|o| breakable(o)).collect::<Vec<_>>(),
        rows,
        totals,
        outcomes_svg => safe(charts.0),
        sends_svg => charts.1.map(safe),
        per => if sends.bucket == DAY { "day" } else { "hour" },
        quiet,
        delay_svg => charts.2.map(safe),
        delay_rows,
        held_columns => HELD_BACK.iter().map(|(o, _)| breakable(o)).collect::<Vec<_>>(),
        held_meaning => HELD_BACK.iter().map(|(o, m)| (*o, *m)).collect::<Vec<_>>(),
        held_rows,
        held_total,
        samples,
        samples_per_rule => super::SAMPLES_PER_RULE,
    };
    let mut env = crate::preview::environment();
    env.add_template("report.html", include_str!("report.html"))
        .map_err(|e| format!("the report template is invalid: {e:#}"))?;
    env.get_template("report.html")
        .and_then(|t| t.render(ctx))
        .map_err(|e| format!("cannot build the report page: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(
        rule: &str,
        outcome: &'static str,
        trigger: Millis,
        fired: Millis,
        send: Option<Millis>,
    ) -> ReplayDecision {
        ReplayDecision {
            rule: rule.into(),
            customer: "c".into(),
            notification_id: "n".into(),
            outcome,
            fired_at: fired,
            trigger_at: trigger,
            send_at: send,
        }
    }

    #[test]
    fn sends_are_counted_in_the_hour_they_go_out() {
        let t0 = 1_700_000_000_000 / HOUR * HOUR; // a whole hour
        let decisions = [
            d("a", "sent", t0, t0 + 10 * MINUTE, Some(t0 + 10 * MINUTE)),
            d("a", "sent", t0, t0 + 59 * MINUTE, Some(t0 + 59 * MINUTE)),
            // Decided at hour 1, deferred by quiet hours to hour 3.
            d("a", "deferred", t0, t0 + HOUR, Some(t0 + 3 * HOUR + 1)),
            d("a", "capped", t0, t0 + HOUR, None),
            d("b", "sent", t0, t0 + 2 * HOUR, Some(t0 + 2 * HOUR)),
            d("c", "shadow", t0, t0, None),
        ];
        let s = sends_over_time(&decisions, t0 + 5 * MINUTE, t0 + 2 * HOUR, HOUR);
        assert_eq!(s.start, t0);
        assert_eq!(
            s.series["a"],
            vec![2, 0, 0, 1],
            "widened to the deferred send"
        );
        assert_eq!(s.series["b"], vec![0, 0, 1, 0]);
        assert!(!s.series.contains_key("c"), "shadow sends nothing");
        assert_eq!(bucket_for(7 * DAY), HOUR);
        assert_eq!(bucket_for(60 * DAY), DAY);
    }

    #[test]
    fn trigger_to_send_buckets_and_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 90.0), Some(7));
        let ten: Vec<Millis> = (1..=10).collect();
        assert_eq!(percentile(&ten, 50.0), Some(5));
        assert_eq!(percentile(&ten, 90.0), Some(9));
        assert_eq!(percentile(&ten, 100.0), Some(10));

        let h = delay_histogram(&[0, MINUTE - 1, MINUTE, 30 * MINUTE, 3 * HOUR, 8 * DAY]);
        assert_eq!(h, vec![2, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1]);
        assert_eq!(h.len(), DELAY_BUCKETS.len());

        let decisions = [
            d("a", "sent", 0, 30 * MINUTE, Some(30 * MINUTE)),
            d("a", "deferred", 0, 30 * MINUTE, Some(10 * HOUR)),
            d("a", "sent", 0, 40 * MINUTE, Some(40 * MINUTE)),
            d("a", "cooldown", 0, 30 * MINUTE, None),
        ];
        let s = trigger_to_send(&decisions);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].sends, s[0].median, s[0].p90, s[0].max),
            (3, Some(40 * MINUTE), Some(10 * HOUR), Some(10 * HOUR))
        );
        assert_eq!(s[0].histogram.iter().sum::<u64>(), 3);
    }

    #[test]
    fn held_back_counts_removals_and_deferral_delays() {
        let mut r = ReplayReport::default();
        for (rule, outcome, n) in [
            ("a", "sent", 4),
            ("a", "capped", 2),
            ("a", "unsubscribed", 1),
            ("b", "cooldown", 3),
            ("b", "deferred", 2),
        ] {
            r.outcomes
                .entry(rule.to_string())
                .or_default()
                .insert(outcome, n);
        }
        r.decisions = vec![
            d("b", "deferred", 0, HOUR, Some(3 * HOUR)),
            d("b", "deferred", 0, HOUR, Some(9 * HOUR)),
        ];
        let h = held_back(&r);
        let col = |o: &str| HELD_BACK.iter().position(|(x, _)| *x == o).unwrap();
        assert_eq!(h.per_rule["a"][col("capped")], 2);
        assert_eq!(h.per_rule["a"][col("unsubscribed")], 1);
        assert_eq!(h.per_rule["b"][col("cooldown")], 3);
        assert_eq!(h.total.iter().sum::<u64>(), 6);
        assert_eq!(
            h.deferred["b"],
            Deferrals {
                count: 2,
                total: 10 * HOUR,
                median: Some(2 * HOUR)
            }
        );
        assert_eq!(h.deferred_total.count, 2);
        assert!(!h.deferred.contains_key("a"));
    }

    #[test]
    fn time_axes_get_at_most_eight_ticks_on_round_times() {
        let sunday = 1_763_251_200_000; // 2025-11-16T00:00:00Z
        assert_eq!(time_label(sunday), "Sun 16 Nov");
        assert_eq!(time_label(sunday + 6 * HOUR), "06:00");
        // A week of hours from 05:00: a tick at each midnight.
        let (ticks, step) = time_ticks(sunday + 5 * HOUR, HOUR, 7 * 24);
        assert_eq!(step, DAY);
        assert_eq!(ticks, (0..7).map(|d| 19 + d * 24).collect::<Vec<_>>());
        let (ticks, step) = time_ticks(sunday, HOUR, 36);
        assert_eq!((step, ticks.len()), (6 * HOUR, 6));
        let (ticks, step) = time_ticks(sunday, DAY, 90);
        assert_eq!(step, 14 * DAY);
        assert!(ticks.len() <= 8);
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(human(42_000), "42 s");
        assert_eq!(human(12 * MINUTE + 20_000), "12 min");
        assert_eq!(human(90 * MINUTE), "1.5 h");
        assert_eq!(human(2 * HOUR), "2 h");
        assert_eq!(human(13 * HOUR), "13 h");
        assert_eq!(human(2 * DAY + 4 * HOUR), "2 d 4 h");
        assert_eq!(human(3 * DAY), "3 d");
    }

    #[test]
    fn charts_are_svg_with_their_labels() {
        let mut outcomes = BTreeMap::new();
        outcomes.insert(
            "checkout-dropoff".to_string(),
            BTreeMap::from([("sent", 5), ("capped", 2)]),
        );
        outcomes.insert("quiet-rule".to_string(), BTreeMap::new());
        let svg = outcomes_chart(&outcomes).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in ["checkout-dropoff", "quiet-rule", "capped", "sent"] {
            assert!(
                svg.contains(&format!(">\n{text}\n<")) || svg.contains(text),
                "{text}: {svg}"
            );
        }
        assert!(
            !svg.contains("cooldown"),
            "only outcomes that occur are in the legend"
        );

        let t0 = 1_700_000_000_000 / DAY * DAY;
        let decisions = [d(
            "checkout-dropoff",
            "sent",
            t0,
            t0 + HOUR,
            Some(t0 + HOUR),
        )];
        let s = sends_over_time(&decisions, t0, t0 + 3 * DAY, HOUR);
        let svg = sends_chart(&s).unwrap();
        assert!(
            svg.contains("checkout-dropoff: 1 messages, at most 1 in one hour"),
            "{svg}"
        );
        assert!(svg.contains("Wed 15 Nov"), "day ticks: {svg}");
        let svg = delay_chart(&trigger_to_send(&decisions)).unwrap();
        assert!(
            svg.contains("1–2h") && svg.contains("share of the rule"),
            "{svg}"
        );
    }
}
