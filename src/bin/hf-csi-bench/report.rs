//! Result rows, their PASS/MISS verdicts, and the two outputs: a markdown table per profile on
//! stdout and the JSON file.

use serde_json::{Value, json};

/// A measured number, or why there is none.
#[derive(Debug, Clone)]
pub enum Cell {
    Num(f64),
    Na(String),
}

/// What a value is compared with, when the comparison is a goal.
#[derive(Debug, Clone)]
pub enum Target {
    /// Informative row.
    None,
    AtLeast(f64),
    AtMost(f64),
    /// `value / baseline` at least this.
    RatioAtLeast(f64),
    /// The goal does not apply here, and why.
    Na(String),
}

/// One line of a table.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: String,
    pub metric: String,
    pub unit: &'static str,
    pub value: Cell,
    /// The comparison value and what it is.
    pub baseline: Option<(f64, String)>,
    pub target: Target,
}

impl Row {
    pub fn new(section: impl Into<String>, metric: impl Into<String>, unit: &'static str) -> Row {
        Row {
            section: section.into(),
            metric: metric.into(),
            unit,
            value: Cell::Na("not measured".into()),
            baseline: None,
            target: Target::None,
        }
    }

    pub fn value(mut self, v: Result<f64, String>) -> Row {
        self.value = match v {
            Ok(v) if v.is_finite() => Cell::Num(v),
            Ok(v) => Cell::Na(format!("not a number ({v})")),
            Err(e) => Cell::Na(e),
        };
        self
    }

    pub fn baseline(mut self, b: Result<f64, String>, what: impl Into<String>) -> Row {
        if let Ok(b) = b.as_ref()
            && b.is_finite()
        {
            self.baseline = Some((*b, what.into()));
        }
        self
    }

    pub fn target(mut self, t: Target) -> Row {
        self.target = t;
        self
    }

    fn num(&self) -> Option<f64> {
        match self.value {
            Cell::Num(v) => Some(v),
            Cell::Na(_) => None,
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        let (b, _) = self.baseline.as_ref()?;
        let v = self.num()?;
        (*b != 0.0).then(|| v / b)
    }

    /// `Some(true)` PASS, `Some(false)` MISS, `None` when there is no verdict.
    pub fn pass(&self) -> Option<bool> {
        let v = self.num()?;
        match self.target {
            Target::None | Target::Na(_) => None,
            Target::AtLeast(t) => Some(v >= t),
            Target::AtMost(t) => Some(v <= t),
            Target::RatioAtLeast(r) => self.ratio().map(|x| x >= r),
        }
    }

    fn target_text(&self) -> String {
        let verdict = match self.pass() {
            Some(true) => " PASS",
            Some(false) => " **MISS**",
            None if matches!(self.target, Target::None | Target::Na(_)) => "",
            None => " n/a",
        };
        let goal = match &self.target {
            Target::None => String::new(),
            Target::AtLeast(t) => format!("≥ {} {}", fmt_num(*t), self.unit),
            Target::AtMost(t) => format!("≤ {} {}", fmt_num(*t), self.unit),
            Target::RatioAtLeast(r) => format!("≥ {:.0}% of baseline", r * 100.0),
            Target::Na(why) => format!("n/a ({why})"),
        };
        format!("{goal}{verdict}")
    }

    fn to_json(&self) -> Value {
        let (value, na) = match &self.value {
            Cell::Num(v) => (json!(v), Value::Null),
            Cell::Na(why) => (Value::Null, json!(why)),
        };
        let target = match &self.target {
            Target::None => Value::Null,
            Target::AtLeast(t) => json!({"at_least": t}),
            Target::AtMost(t) => json!({"at_most": t}),
            Target::RatioAtLeast(r) => json!({"ratio_at_least": r}),
            Target::Na(why) => json!({"not_applicable": why}),
        };
        json!({
            "section": self.section,
            "metric": self.metric,
            "unit": self.unit,
            "value": value,
            "not_available": na,
            "baseline": self.baseline.as_ref().map(|(v, _)| *v),
            "baseline_is": self.baseline.as_ref().map(|(_, w)| w.clone()),
            "ratio": self.ratio(),
            "target": target,
            "status": match self.pass() { Some(true) => "PASS", Some(false) => "MISS", None => "" },
        })
    }
}

/// Three significant-ish digits: 5123, 412, 41.2, 4.12, 0.412.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn with_unit(v: f64, unit: &str) -> String {
    if unit.is_empty() { fmt_num(v) } else { format!("{} {unit}", fmt_num(v)) }
}

/// Everything measured under one profile.
pub struct ProfileReport {
    pub name: String,
    pub description: String,
    pub rtt_ms: f64,
    pub bandwidth_mbit: Option<f64>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub details: serde_json::Map<String, Value>,
    pub seconds: f64,
}

impl ProfileReport {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "### Profile `{}`: {} ({:.0} s)\n\n| metric | value | baseline | ratio | target |\n|---|---|---|---|---|\n",
            self.name, self.description, self.seconds
        );
        let mut section = "";
        for r in &self.rows {
            if r.section != section {
                section = &r.section;
                out.push_str(&format!("| **{section}** | | | | |\n"));
            }
            let value = match &r.value {
                Cell::Num(v) => with_unit(*v, r.unit),
                Cell::Na(why) => format!("n/a ({})", why.replace('|', "/").replace('\n', " ")),
            };
            let baseline =
                r.baseline.as_ref().map(|(v, what)| format!("{} ({what})", with_unit(*v, r.unit))).unwrap_or_default();
            let ratio = r.ratio().map(|x| format!("{}×", fmt_num(x))).unwrap_or_default();
            out.push_str(&format!("| {} | {value} | {baseline} | {ratio} | {} |\n", r.metric, r.target_text()));
        }
        for n in &self.notes {
            out.push_str(&format!("\n- {n}"));
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "profile": self.name,
            "description": self.description,
            "rtt_ms": self.rtt_ms,
            "bandwidth_mbit": self.bandwidth_mbit,
            "seconds": self.seconds,
            "rows": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "notes": self.notes,
            "details": self.details,
        })
    }

    /// (PASS, MISS) counts.
    pub fn verdicts(&self) -> (usize, usize) {
        let p = self.rows.iter().filter(|r| r.pass() == Some(true)).count();
        let m = self.rows.iter().filter(|r| r.pass() == Some(false)).count();
        (p, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_ratio() {
        let r =
            Row::new("s", "m", "MB/s").value(Ok(40.0)).baseline(Ok(100.0), "disk").target(Target::RatioAtLeast(0.5));
        assert_eq!(r.ratio(), Some(0.4));
        assert_eq!(r.pass(), Some(false));
        let r = Row::new("s", "m", "ms").value(Ok(3.0)).target(Target::AtMost(5.0));
        assert_eq!(r.pass(), Some(true));
        let r = Row::new("s", "m", "ms").value(Err("no fio".into())).target(Target::AtMost(5.0));
        assert_eq!(r.pass(), None);
        assert_eq!(fmt_num(5123.4), "5123");
        assert_eq!(fmt_num(41.23), "41.2");
        assert_eq!(fmt_num(0.0412), "0.041");
    }
}
