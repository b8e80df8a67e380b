//! `wsgate-loadtest table FILE...`: the `--out` results of several runs as Markdown tables,
//! one per scenario, one row per file (named by its file stem), for `RESULTS.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

/// A column: its heading and how to read it from a result.
type Column = (&'static str, fn(&Value) -> String);

/// A table being gathered: its columns and its rows (file stem, result).
type Rows = (&'static [Column], Vec<(String, Value)>);

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "–".to_owned(),
    }
}

/// A figure of the result (`figures.KEY`).
fn fig(r: &Value, key: &str) -> Option<f64> {
    r["figures"][key].as_f64()
}

/// Deliveries (or sends) offered per second: members × rate.
fn offered(r: &Value) -> Option<f64> {
    let p = &r["parameters"];
    Some(p["members"].as_f64()? * p["rate_per_second"].as_f64()?)
}

const IDLE: &[Column] = &[
    ("connections", |r| num(fig(r, "connections_established"), 0)),
    ("failed", |r| num(fig(r, "connections_failed"), 0)),
    ("connects/s", |r| num(fig(r, "connects_per_second"), 0)),
    ("connect p99 ms", |r| {
        let us = r["figures"]["connect_latency_us"]["p99"].as_f64();
        num(us.map(|u| u / 1000.0), 1)
    }),
    ("RSS KiB/conn", |r| {
        num(fig(r, "rss_growth_kib_per_connection"), 2)
    }),
    ("dropped", |r| {
        num(fig(r, "connections_dropped_during_hold"), 0)
    }),
];

const BROADCAST: &[Column] = &[
    ("members", |r| num(fig(r, "members"), 0)),
    ("offered/s", |r| num(offered(r), 0)),
    ("delivered/s", |r| num(fig(r, "deliveries_per_second"), 0)),
    ("sustained/s", |r| {
        num(fig(r, "deliveries_per_second_sustained"), 0)
    }),
    ("lost", |r| num(fig(r, "lost"), 0)),
    ("dup", |r| num(fig(r, "duplicates"), 0)),
    ("p50 ms", |r| {
        num(r["figures"]["latency_ms"]["p50"].as_f64(), 1)
    }),
    ("p99 ms", |r| {
        num(r["figures"]["latency_ms"]["p99"].as_f64(), 1)
    }),
    ("p99.9 ms", |r| {
        num(r["figures"]["latency_ms"]["p999"].as_f64(), 1)
    }),
    ("node CPU s/1,000", |r| {
        num(fig(r, "node_cpu_seconds_per_1000_deliveries"), 5)
    }),
    ("node RSS MiB", |r| {
        num(fig(r, "node_rss_kib").map(|k| k / 1024.0), 0)
    }),
    ("harness core/worker", |r| {
        num(fig(r, "harness_cpu_share_per_worker"), 2)
    }),
];

const FLOOR: &[Column] = &[
    ("connections", |r| {
        num(r["parameters"]["members"].as_f64(), 0)
    }),
    ("sends/s", |r| num(offered(r), 0)),
    ("lost", |r| num(fig(r, "lost"), 0)),
    ("p50 ms", |r| {
        num(r["figures"]["latency_ms"]["p50"].as_f64(), 1)
    }),
    ("p99 ms", |r| {
        num(r["figures"]["latency_ms"]["p99"].as_f64(), 1)
    }),
    ("sender CPU s/1,000", |r| {
        num(fig(r, "sender_cpu_seconds_per_1000_sends"), 5)
    }),
];

/// The columns of a scenario's table, if it has one.
fn columns(scenario: &str) -> Option<&'static [Column]> {
    match scenario {
        "idle" => Some(IDLE),
        "broadcast" => Some(BROADCAST),
        "floor" => Some(FLOOR),
        _ => None,
    }
}

/// Prints the tables of `files`.
pub fn run(files: &[PathBuf]) -> anyhow::Result<()> {
    print!("{}", render(files)?);
    Ok(())
}

/// The tables of `files` as Markdown: one per scenario (and load), rows in file order.
pub fn render(files: &[PathBuf]) -> anyhow::Result<String> {
    // Key: scenario and the load, so broadcasts at different loads get their own tables.
    let mut tables: BTreeMap<String, Rows> = BTreeMap::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let r: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?;
        let scenario = r["scenario"].as_str().unwrap_or_default().to_owned();
        let Some(cols) = columns(&scenario) else {
            anyhow::bail!("{}: no table for scenario {scenario:?}", f.display());
        };
        let p = &r["parameters"];
        let load = match scenario.as_str() {
            "idle" => format!("{} connections", p["connections"]),
            _ => format!("{} members x {}/s", p["members"], p["rate_per_second"]),
        };
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        tables
            .entry(format!("{scenario}, {load}"))
            .or_insert_with(|| (cols, Vec::new()))
            .1
            .push((name, r));
    }
    let mut md = String::new();
    for (title, (cols, rows)) in tables {
        md += &format!("\n**{title}**\n\n| run |");
        for (h, _) in cols {
            md += &format!(" {h} |");
        }
        md += "\n|---|";
        md += &"---:|".repeat(cols.len());
        md += "\n";
        for (name, r) in rows {
            md += &format!("| {name} |");
            for (_, read) in cols {
                md += &format!(" {} |", read(&r));
            }
            md += "\n";
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_become_one_table_per_scenario_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, v: Value| {
            let p = dir.path().join(name);
            std::fs::write(&p, v.to_string()).unwrap();
            p
        };
        let b = |rate: u32, delivered: u32| {
            serde_json::json!({"scenario": "broadcast",
                "parameters": {"members": 10, "rate_per_second": rate},
                "figures": {"members": 10, "deliveries_per_second": delivered, "lost": 0,
                    "latency_ms": {"p50": 1.5, "p99": 3.5}}})
        };
        let files = vec![
            write("peers-wsgate-broadcast.json", b(5, 50)),
            write("peers-soketi-broadcast.json", b(5, 49)),
            write("peers-wsgate-saturation.json", b(400, 4000)),
        ];
        let md = render(&files).unwrap();
        assert_eq!(md.matches("| run |").count(), 2, "{md}");
        assert!(
            md.contains("| peers-soketi-broadcast | 10 | 50 | 49 | – | 0 | – | 1.5 | 3.5 |"),
            "{md}"
        );
        let bad = write("x.json", serde_json::json!({"scenario": "nope"}));
        assert!(render(&[bad]).is_err());
    }
}
