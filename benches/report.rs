//! Output of the load harness: result rows, the table on stdout, the JSON
//! file and hand-written SVG charts (no plotting crate).

#![allow(dead_code)]

use std::fmt::Write as _;

use serde_json::Value;
use serde_json::json;

/// One figure.
#[derive(Clone, Debug)]
pub struct Row {
    /// The scenario (and its variant).
    pub scenario: String,
    /// The system measured.
    pub system: String,
    /// What was measured.
    pub figure: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// 1-minute load average when it was measured.
    pub load1: f64,
    /// Cores other processes kept busy while it was measured.
    pub other_cores: f64,
}

impl Row {
    /// The row as JSON.
    pub fn json(&self) -> Value {
        json!({"scenario": self.scenario, "system": self.system, "figure": self.figure, "value": self.value,
               "unit": self.unit, "load1": self.load1, "other_cores": self.other_cores})
    }
}

/// A number for the table: thousands separated, decimals by magnitude.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let decimals = if v.abs() >= 1000.0 {
        0
    } else if v.abs() >= 100.0 {
        1
    } else if v.abs() >= 1.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    let (int, frac) = s.split_once('.').map_or((s.as_str(), None), |(a, b)| (a, Some(b)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// The table of rows, as printed on stdout.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:<26} {:<34} {:>16} {:<4} {:>5} {:>5}",
        "scenario", "system", "figure", "value", "", "load", "other"
    );
    let mut last = String::new();
    for r in rows {
        if r.scenario != last && !last.is_empty() {
            out.push('\n');
        }
        last = r.scenario.clone();
        let _ = writeln!(
            out,
            "{:<34} {:<26} {:<34} {:>16} {:<4} {:>5.2} {:>5.2}",
            r.scenario,
            r.system,
            r.figure,
            num(r.value),
            r.unit,
            r.load1,
            r.other_cores
        );
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// A horizontal bar chart: one bar per (label, value), value printed at the
/// bar's end.
pub fn bar_chart(title: &str, unit: &str, items: &[(String, f64)]) -> String {
    let (w, left, right, bar, gap, top) = (760.0, 230.0, 120.0, 22.0, 10.0, 48.0);
    let h = top + items.len() as f64 * (bar + gap) + 30.0;
    let max = items.iter().map(|i| i.1).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let span = w - left - right;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="{x}" y="24" font-size="16" text-anchor="middle" font-weight="bold">{t}</text>
"#,
        x = w / 2.0,
        t = esc(title)
    );
    for (i, (label, value)) in items.iter().enumerate() {
        let y = top + i as f64 * (bar + gap);
        let len = (value / max * span).max(1.0);
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{l}</text><rect x="{left}" y="{y}" width="{len:.1}" height="{bar}" fill="{color}"/><text x="{vx:.1}" y="{ty}">{v} {u}</text>"#,
            lx = left - 8.0,
            ty = y + bar * 0.7,
            l = esc(label),
            vx = left + len + 6.0,
            v = num(*value),
            u = esc(unit)
        );
    }
    let _ =
        writeln!(s, r#"<line x1="{left}" y1="{t}" x2="{left}" y2="{b}" stroke="black"/>"#, t = top - 4.0, b = h - 26.0);
    s.push_str("</svg>\n");
    s
}

/// One panel of a line chart: a title, x labels, and series (name, y per x;
/// NaN for none).
pub struct Panel {
    /// Panel title.
    pub title: String,
    /// Label of each x position.
    pub x: Vec<String>,
    /// (series name, values).
    pub series: Vec<(String, Vec<f64>)>,
}

/// Line charts stacked vertically, log-scale y axis (for latencies spanning
/// decades), categorical x axis.
pub fn line_panels(title: &str, x_title: &str, y_title: &str, panels: &[Panel]) -> String {
    let (w, ph, left, right, top) = (760.0, 230.0, 70.0, 140.0, 40.0);
    let h = top + panels.len() as f64 * (ph + 30.0) + 10.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{x}" y="24" font-size="16" text-anchor="middle" font-weight="bold">{t}</text>
"#,
        x = w / 2.0,
        t = esc(title)
    );
    for (p, panel) in panels.iter().enumerate() {
        let y0 = top + p as f64 * (ph + 30.0) + 20.0;
        let (pw, inner) = (w - left - right, ph - 50.0);
        let values: Vec<f64> =
            panel.series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite() && *v > 0.0).collect();
        let lo = values.iter().copied().fold(f64::MAX, f64::min).max(1e-3);
        let hi = values.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
        let (llo, lhi) = (lo.log10().floor(), hi.log10().ceil());
        let ypos = |v: f64| y0 + inner - (v.max(10f64.powf(llo)).log10() - llo) / (lhi - llo).max(1.0) * inner;
        let n = panel.x.len().max(1);
        let xpos = |i: usize| left + (i as f64 + 0.5) * pw / n as f64;
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{ty}" font-weight="bold">{t}</text><rect x="{left}" y="{y0}" width="{pw}" height="{inner}" fill="none" stroke="black"/>"#,
            ty = y0 - 6.0,
            t = esc(&panel.title)
        );
        let mut d = llo;
        while d <= lhi + 0.01 {
            let v = 10f64.powf(d);
            let y = ypos(v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{l}</text>"##,
                x2 = left + pw,
                tx = left - 4.0,
                ty = y + 4.0,
                l = num(v)
            );
            d += 1.0;
        }
        for (i, label) in panel.x.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle">{l}</text>"#,
                x = xpos(i),
                y = y0 + inner + 16.0,
                l = esc(label)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle">{t}</text><text x="14" y="{ym:.1}" transform="rotate(-90 14 {ym:.1})" text-anchor="middle">{yt}</text>"#,
            x = left + pw / 2.0,
            y = y0 + inner + 32.0,
            t = esc(x_title),
            ym = y0 + inner / 2.0,
            yt = esc(y_title)
        );
        for (k, (name, v)) in panel.series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let points: Vec<String> = v
                .iter()
                .enumerate()
                .filter(|(_, y)| y.is_finite() && **y > 0.0)
                .map(|(i, y)| format!("{:.1},{:.1}", xpos(i), ypos(*y)))
                .collect();
            if !points.is_empty() {
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                    points.join(" ")
                );
                for pt in &points {
                    let (x, y) = pt.split_once(',').unwrap_or(("0", "0"));
                    let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
                }
            }
            let ly = y0 + 10.0 + k as f64 * 18.0;
            let _ = writeln!(
                s,
                r#"<line x1="{x1}" y1="{ly}" x2="{x2}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{tx}" y="{ty}">{n}</text>"#,
                x1 = left + pw + 10.0,
                x2 = left + pw + 30.0,
                tx = left + pw + 36.0,
                ty = ly + 4.0,
                n = esc(name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
