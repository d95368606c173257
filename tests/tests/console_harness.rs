//! The browser harness of the web console tests (tests/console/run.mjs driven from
//! tests/src/browser.rs) against a real control plane: a page over HTTPS with the private CA, an
//! ask the test answers, a screenshot and an axe report; and proof that it fails when it should —
//! a false expectation, a critical accessibility violation, a CSP violation and an uncaught page
//! error. Needs node, npm and Chromium, not root.

use latch_e2e::ControlPlane;
use latch_e2e::browser::{
    browser_enabled, control_plane_env, run_scenario, scenario, try_run_scenario,
};
use serde_json::{Value, json};

/// Answers the harness scenario's asks: `sum` adds `a` and `b`; anything else is refused.
fn answer(kind: &str, data: &Value) -> Result<Value, String> {
    match kind {
        "sum" => {
            let term = |name: &str| {
                data[name]
                    .as_i64()
                    .ok_or(format!("sum: {name} is not a number"))
            };
            Ok(json!(term("a")? + term("b")?))
        }
        _ => Err(format!("no such ask: {kind}")),
    }
}

/// Runs the scenario `name`, which must fail with each of `expected` in its failure (the
/// scenario's log); returns the failure, or `None` when `test` skips for want of a browser.
fn assert_fails(test: &str, name: &str, expected: &[&str]) -> Option<String> {
    if !browser_enabled(test) {
        return None;
    }
    let failure = match try_run_scenario(&scenario(name), &[], answer) {
        Ok(run) => panic!("the scenario {name} should have failed: {run:#?}"),
        Err(failure) => failure,
    };
    for line in expected {
        assert!(failure.contains(line), "{line:?} missing: {failure}");
    }
    Some(failure)
}

#[test]
fn a_scenario_opens_the_control_plane_asks_the_test_and_checks_accessibility() {
    if !browser_enabled("a_scenario_opens_the_control_plane_asks_the_test_and_checks_accessibility")
    {
        return;
    }
    let cp = ControlPlane::start(&[]);
    let mut asked = Vec::new();
    let run = run_scenario(
        &scenario("harness"),
        &control_plane_env(&cp),
        |kind, data| {
            asked.push(kind.to_owned());
            answer(kind, data)
        },
    );
    assert_eq!(asked, ["sum", "unknown"], "the asks: {:#?}", run.log);
    assert_eq!(
        run.steps(),
        [
            "the health endpoint answers over HTTPS",
            "the Rust test answers an ask",
            "an ask the Rust test refuses rejects",
            "a second page has cookies of its own",
            "screenshot",
            "a labelled form passes axe",
        ]
    );
    let png = std::fs::read(run.out_dir.join("health.png")).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "health.png is not a PNG");
    let axe: Value = serde_json::from_slice(
        &std::fs::read(run.out_dir.join("axe-form.json")).expect("the axe report"),
    )
    .expect("the axe report is JSON");
    assert_eq!(axe["violations"], json!([]), "axe found violations");
    assert!(
        axe["passes"]
            .as_array()
            .is_some_and(|passes| passes.iter().any(|rule| rule["id"] == "label")),
        "axe did not check the label: {axe:#}"
    );
}

#[test]
fn a_false_expectation_fails_the_scenario_with_a_screenshot() {
    let Some(failure) = assert_fails(
        "a_false_expectation_fails_the_scenario_with_a_screenshot",
        "harness-expect-fails",
        &[
            "STEP fail the heading says Hosts: expectation failed: the heading is Jobs, not Hosts",
            "\nFAIL Error: expectation failed",
        ],
    ) else {
        return;
    };
    let shot = failure
        .lines()
        .find_map(|line| line.strip_prefix("SCREENSHOT "))
        .unwrap_or_else(|| panic!("no failure screenshot: {failure}"));
    assert!(
        shot.ends_with("harness-expect-fails/failure-1.png"),
        "{shot}"
    );
    assert!(std::path::Path::new(shot).is_file(), "{shot} is missing");
}

#[test]
fn a_critical_accessibility_violation_fails_axe() {
    assert_fails(
        "a_critical_accessibility_violation_fails_axe",
        "harness-axe-fails",
        &[
            "AXE label (critical): Form elements must have labels",
            "AXE image-alt (critical): Images must have alternative text",
            "STEP fail the broken form passes axe: axe broken-form: serious or critical violations: image-alt, label",
        ],
    );
}

#[test]
fn a_csp_violation_or_an_uncaught_page_error_fails_the_scenario() {
    assert_fails(
        "a_csp_violation_or_an_uncaught_page_error_fails_the_scenario",
        "harness-page-errors",
        &[
            "CSP violation on https://console.invalid/csp: enforce script-src-elem blocked inline",
            "uncaught error on page 1 (https://console.invalid/throws): notDefined is not defined",
        ],
    );
}
