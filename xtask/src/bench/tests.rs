//! The report's pieces: criterion's estimates, figure lines, the JSON
//! report, and the doc that keeps its method section.

use serde_json::Value;

use super::criterion::median_point_estimate;
use super::examples::figure_line;
use super::report::{markdown, method_section, report_json};
use super::*;

#[test]
fn reads_criterion_medians_and_figure_lines() {
    let est = r#"{"mean":{"point_estimate":5.0},"median":{"confidence_interval":{"lower_bound":1.0},"point_estimate":1294140.29,"standard_error":1.0}}"#;
    assert_eq!(median_point_estimate(est), Some(1294140.29));
    assert_eq!(
        median_point_estimate(r#"{"mean":{"point_estimate":5.0}}"#),
        None
    );
    assert_eq!(
        figure_line(r#"{"method":"a \"b\" | c","name":"x","unit":"ms","value":3.5}"#),
        Some(("x".into(), 3.5, "ms".into(), "a \"b\" | c".into()))
    );
    assert_eq!(
        figure_line(r#"{"name":"x","unit":"ms","value":1}"#),
        Some(("x".into(), 1.0, "ms".into(), String::new()))
    );
    assert_eq!(figure_line(r#"{"name":"x","value":"3"}"#), None);
    assert_eq!(figure_line("not json"), None);
}

#[test]
fn report_is_json_with_null_for_missing_values() {
    let figures = [
        Figure {
            part: 1,
            name: "a".into(),
            value: 2.5,
            unit: "µs".into(),
            method: "say \"hi\"\n".into(),
        },
        Figure {
            part: 3,
            name: "b".into(),
            value: f64::NAN,
            unit: "ms".into(),
            method: String::new(),
        },
    ];
    let text = report_json(&figures, &[("cpu", "x86 \"fast\"".into())]);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["environment"]["cpu"], "x86 \"fast\"");
    assert_eq!(v["figures"][0]["value"], 2.5);
    assert_eq!(v["figures"][0]["method"], "say \"hi\"\n");
    assert_eq!(v["figures"][1]["part"], 3);
    assert!(v["figures"][1]["value"].is_null());
}

#[test]
fn the_doc_keeps_its_method_section_and_lists_every_part() {
    let old = "# Performance\n\nold figures\n\n## Method\n\n- **Part 1** is tiny.\n";
    let method = method_section(old).unwrap();
    assert_eq!(method, "## Method\n\n- **Part 1** is tiny.\n");
    assert_eq!(method_section("# Performance\n\nno method\n"), None);
    let figures = [Figure {
        part: 2,
        name: "pipeline_no_spool".into(),
        value: 1234.0,
        unit: "events/s".into(),
        method: "a | b".into(),
    }];
    let doc = markdown(&figures, &[("cpu", "x".into())], false, method);
    assert!(doc.ends_with(method), "{doc}");
    assert!(doc.contains("| `pipeline_no_spool` | 1234 | events/s |  | a \\| b |"));
    // Every section of every part, in order, once.
    let mut at = 0;
    for n in 1..=7u8 {
        let title = PARTS
            .iter()
            .flat_map(|p| p.sections)
            .find(|(k, _)| *k == n)
            .map(|(_, t)| *t)
            .unwrap();
        let heading = format!("\n## {title}\n");
        let i = doc.find(&heading).unwrap_or_else(|| panic!("{heading:?}"));
        assert!(i > at, "{heading:?} out of order");
        at = i;
    }
    assert!(doc.contains("Not measured in this run (`--no-live`)."));
    // The regenerated doc still has its method section for the next run.
    assert_eq!(method_section(&doc), Some(method));
}
