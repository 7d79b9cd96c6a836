//! Draws a [`Report`]'s timeline as one HTML page with inline SVG and CSS: the verdict and
//! failures on top, one lane per launcher and per run on a time axis, a legend, and every
//! event in a table. Every string from the report is escaped.

use std::fmt::Write;

use super::{LaneKind, Mark, MarkKind, Timeline};
use crate::report::Report;

const WIDTH: f64 = 1200.0;
const LABEL_W: f64 = 150.0;
const RIGHT_PAD: f64 = 30.0;
const LANE_H: f64 = 30.0;
const AXIS_H: f64 = 28.0;

/// Fill colours of run states, launcher lifetimes and waits.
const STATES: &[(&str, &str)] = &[
    ("scheduled", "#d9d9d9"),
    ("claimed", "#c6dbef"),
    ("preparing", "#9ecae1"),
    ("running", "#4292c6"),
    ("finished", "#74c476"),
    ("failed", "#fb6a4a"),
    ("canceled", "#bdbdbd"),
    ("timed_out", "#fd8d3c"),
    ("up", "#c7e9c0"),
    ("wait", "#fff2ae"),
];

/// The page for `report`, titled `title`.
pub fn render_html(report: &Report, title: &str) -> String {
    let t = &report.trace.timeline;
    // A recorded timeline carries the report's text with secrets redacted.
    let text = t.text.clone().unwrap_or_else(|| super::ReportText {
        failures: report.failures.clone(),
        notes: report.trace.notes.clone(),
        canonical: report.trace.canonical.clone(),
    });
    let mut h = String::with_capacity(16 * 1024);
    let verdict = if report.passed { "PASS" } else { "FAIL" };
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{} · {verdict}</title><style>{CSS}</style></head><body>\n\
         <h1>{}</h1>\n<p class=\"verdict {}\">{verdict} · seed {} · {} lanes, {} events, {}</p>\n",
        esc(title),
        esc(title),
        verdict.to_ascii_lowercase(),
        report.seed,
        t.lanes.len(),
        t.marks.len(),
        fmt_ms(t.end_ms)
    );
    if !text.failures.is_empty() {
        h.push_str("<ol class=\"failures\">\n");
        for f in &text.failures {
            let _ = writeln!(h, "<li>{}</li>", esc(f));
        }
        h.push_str("</ol>\n");
    }
    svg(&mut h, t);
    legend(&mut h);
    table(&mut h, t);
    h.push_str("<details><summary>trace</summary><pre>");
    for n in &text.notes {
        let _ = writeln!(h, ". {}", esc(n));
    }
    for c in &text.canonical {
        let _ = writeln!(h, "= {}", esc(c));
    }
    h.push_str("</pre></details>\n</body></html>\n");
    h
}

const CSS: &str = "body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}\
h1{font-size:18px;margin:0 0 4px}.verdict{font-weight:bold;margin:0 0 8px}\
.pass{color:#2b7a2b}.fail{color:#c0262d}.failures{color:#c0262d;margin:4px 0 12px}\
svg text{font:11px system-ui,sans-serif}.lane-name{font-weight:bold}\
.tick{stroke:#e3e3e3}.mark-label{fill:#333}.mark-label.failure{fill:#c0262d;font-weight:bold}\
.span-label{fill:#111;font-size:10px}.legend span{display:inline-block;margin-right:12px}\
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}\
table{border-collapse:collapse;margin-top:8px}td,th{border:1px solid #ddd;padding:2px 6px;\
text-align:left;vertical-align:top}td.detail{white-space:pre-wrap;font-family:monospace}\
tr.fault td,tr.failure td{color:#c0262d}";

fn x_of(t: &Timeline, ms: u64) -> f64 {
    let span = t.end_ms.max(1) as f64;
    LABEL_W + (WIDTH - LABEL_W - RIGHT_PAD) * (ms as f64 / span)
}

fn svg(h: &mut String, t: &Timeline) {
    let order = t.display_order();
    let height = AXIS_H + LANE_H * order.len() as f64 + 4.0;
    let _ = writeln!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" role=\"img\">"
    );
    // The axis: a tick every 1, 2 or 5 × 10^k ms, about ten of them.
    let step = tick_step(t.end_ms);
    let mut ms = 0;
    while ms <= t.end_ms {
        let x = x_of(t, ms);
        let _ = writeln!(
            h,
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{height}\"/>\
             <text x=\"{x:.1}\" y=\"14\" text-anchor=\"middle\">{}</text>",
            AXIS_H - 8.0,
            fmt_ms(ms)
        );
        ms += step;
    }
    for (row, &i) in order.iter().enumerate() {
        let lane = &t.lanes[i];
        let y = AXIS_H + LANE_H * row as f64;
        let kind = lane_kind(lane.kind);
        let _ = writeln!(
            h,
            "<g class=\"lane\" data-kind=\"{kind}\" data-name=\"{}\">\
             <rect x=\"0\" y=\"{y}\" width=\"{WIDTH}\" height=\"{LANE_H}\" fill=\"{}\"/>\
             <text class=\"lane-name\" x=\"6\" y=\"{:.1}\">{kind} {}</text>",
            esc(&lane.name),
            if row % 2 == 0 { "#fafafa" } else { "#f0f0f0" },
            y + LANE_H / 2.0 + 4.0,
            esc(&lane.name)
        );
        let mut named = "";
        for s in t.spans.iter().filter(|s| s.lane == i) {
            let (x1, x2) = (x_of(t, s.from_ms), x_of(t, s.to_ms));
            let terminal = matches!(
                s.state.as_str(),
                "finished" | "failed" | "canceled" | "timed_out"
            );
            let (top, hgt) = match s.state.as_str() {
                "wait" => (y + LANE_H - 7.0, 4.0),
                _ => (y + 6.0, LANE_H - 12.0),
            };
            let _ = writeln!(
                h,
                "<rect class=\"span\" data-state=\"{}\" x=\"{x1:.1}\" y=\"{top:.1}\" \
                 width=\"{:.1}\" height=\"{hgt:.1}\" fill=\"{}\" fill-opacity=\"{}\">\
                 <title>{} → {}: {}</title></rect>",
                esc(&s.state),
                (x2 - x1).max(1.0),
                state_colour(&s.state),
                if terminal { "0.45" } else { "1" },
                fmt_ms(s.from_ms),
                fmt_ms(s.to_ms),
                esc(&s.detail)
            );
            // A holder is named once, where it first fits, until it changes.
            if !s.label.is_empty() && s.label != named && x2 - x1 > text_width(&s.label) + 6.0 {
                named = &s.label;
                let _ = writeln!(
                    h,
                    "<text class=\"span-label\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                    x1 + 3.0,
                    y + LANE_H - 10.0,
                    esc(&s.label)
                );
            }
        }
        for m in t.marks.iter().filter(|m| m.lane == i) {
            mark(h, m, x_of(t, m.at_ms), y + LANE_H / 2.0);
        }
        mark_labels(h, t, i, y);
        h.push_str("</g>\n");
    }
    h.push_str("</svg>\n");
}

fn text_width(text: &str) -> f64 {
    6.0 * text.chars().count() as f64
}

/// The labels of one lane's marks, where they fit without overlapping: a failure first,
/// then faults and exits, then steps; plain events go unlabelled (their titles tell).
fn mark_labels(h: &mut String, t: &Timeline, lane: usize, y: f64) {
    let rank = |k: MarkKind| match k {
        MarkKind::Failure => 0,
        MarkKind::Fault | MarkKind::Exit => 1,
        MarkKind::Step => 2,
        MarkKind::Event => 3,
    };
    let mut wanted: Vec<&Mark> = t
        .marks
        .iter()
        .filter(|m| m.lane == lane && m.kind != MarkKind::Event)
        .collect();
    wanted.sort_by_key(|m| (rank(m.kind), m.at_ms));
    let mut taken: Vec<(f64, f64)> = Vec::new();
    for m in wanted {
        let x = x_of(t, m.at_ms) + 6.0;
        let w = text_width(&m.label);
        // Near the right edge, a label goes to the left of its mark.
        let x = if x + w > WIDTH { x - 12.0 - w } else { x };
        let end = x + w + 4.0;
        if x < LABEL_W || taken.iter().any(|&(a, b)| x < b && a < end) {
            continue;
        }
        taken.push((x, end));
        let _ = writeln!(
            h,
            "<text class=\"mark-label {}\" x=\"{x:.1}\" y=\"{:.1}\">{}</text>",
            mark_kind(m.kind),
            y + 10.0,
            esc(&m.label)
        );
    }
}

fn mark(h: &mut String, m: &Mark, x: f64, cy: f64) {
    let shape = match m.kind {
        MarkKind::Step => format!(
            "<path d=\"M{x:.1} {:.1}l5 9h-10z\" fill=\"#08519c\"/>",
            cy - 4.0
        ),
        MarkKind::Event => {
            format!("<circle cx=\"{x:.1}\" cy=\"{cy:.1}\" r=\"3\" fill=\"#555\" stroke=\"#fff\"/>")
        }
        MarkKind::Fault => format!(
            "<path d=\"M{x:.1} {:.1}l6 7l-6 7l-6 -7z\" fill=\"#e6550d\" stroke=\"#fff\"/>",
            cy - 7.0
        ),
        MarkKind::Exit => format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"9\" height=\"9\" fill=\"#000\"/>",
            x - 4.5,
            cy - 4.5
        ),
        MarkKind::Failure => format!(
            "<path d=\"M{:.1} {:.1}l14 14m0 -14l-14 14\" stroke=\"#c0262d\" stroke-width=\"4\"/>",
            x - 7.0,
            cy - 7.0
        ),
    };
    let _ = writeln!(
        h,
        "<g class=\"mark {}\" data-at=\"{}\"><title>{} {}</title>{shape}</g>",
        mark_kind(m.kind),
        m.at_ms,
        fmt_ms(m.at_ms),
        esc(&m.detail)
    );
}

fn legend(h: &mut String) {
    h.push_str("<p class=\"legend\">");
    for (state, colour) in STATES {
        let _ = write!(
            h,
            "<span><i style=\"background:{colour}\"></i>{state}</span>"
        );
    }
    h.push_str(
        "<br><span>▲ step</span><span>● event</span><span style=\"color:#e6550d\">◆ fault \
         or error</span><span>■ launcher exit</span><span style=\"color:#c0262d\">✖ failed \
         step</span><span>hover any mark or bar for its details</span></p>\n",
    );
}

fn table(h: &mut String, t: &Timeline) {
    let _ = writeln!(
        h,
        "<details><summary>all {} events</summary><table>\
         <tr><th>time</th><th>lane</th><th>what</th><th>details</th></tr>",
        t.marks.len()
    );
    for m in &t.marks {
        let lane = t
            .lanes
            .get(m.lane)
            .map(|l| format!("{} {}", lane_kind(l.kind), l.name))
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"detail\">{}</td></tr>",
            mark_kind(m.kind),
            fmt_ms(m.at_ms),
            esc(&lane),
            esc(&m.label),
            esc(&m.detail)
        );
    }
    h.push_str("</table></details>\n");
}

fn lane_kind(k: LaneKind) -> &'static str {
    match k {
        LaneKind::World => "world",
        LaneKind::Docker => "docker",
        LaneKind::Launcher => "launcher",
        LaneKind::Run => "run",
    }
}

fn mark_kind(k: MarkKind) -> &'static str {
    match k {
        MarkKind::Step => "step",
        MarkKind::Event => "event",
        MarkKind::Fault => "fault",
        MarkKind::Exit => "exit",
        MarkKind::Failure => "failure",
    }
}

fn state_colour(state: &str) -> &'static str {
    STATES
        .iter()
        .find(|(s, _)| *s == state)
        .map(|(_, c)| *c)
        .unwrap_or("#9e9ac8")
}

fn tick_step(end_ms: u64) -> u64 {
    let rough = (end_ms / 10).max(1);
    let mut unit = 1;
    while unit * 10 <= rough {
        unit *= 10;
    }
    [1, 2, 5, 10]
        .iter()
        .map(|m| m * unit)
        .find(|s| *s >= rough)
        .unwrap_or(unit * 10)
}

/// `850ms`, `1.25s`, `2m03s`.
pub fn fmt_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => {
            let s = format!("{:.2}", ms as f64 / 1000.0);
            format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// Text safe in HTML content, attribute values and SVG: markup characters as entities,
/// control characters (which XML forbids) as U+FFFD; newlines and tabs kept.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}
