use deepwasm_plugins::{GuestError, PluginError, ToolPlugin, World, types::ToolOutput};
use serde_json::Value;

use crate::util::{artifacts, plugin, sandbox};

fn calculator() -> ToolPlugin {
    ToolPlugin::new(plugin(artifacts::CALCULATOR), sandbox(World::Tool, |_| {})).unwrap()
}

fn calculate(expression: &str) -> Result<Value, PluginError> {
    let args = serde_json::json!({ "expression": expression }).to_string();
    let result = calculator().call("calculate", &args)?;
    match result.output {
        ToolOutput::Json(j) => Ok(serde_json::from_str(&j).unwrap()),
        ToolOutput::Text(t) => panic!("expected JSON, got text {t:?}"),
    }
}

#[test]
fn the_calculator_describes_its_tool_with_a_json_schema() {
    let specs = calculator().describe().unwrap();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].name, "calculate");
    let schema: Value = serde_json::from_str(&specs[0].parameters).unwrap();
    assert_eq!(schema["required"], serde_json::json!(["expression"]));
}

#[test]
fn the_calculator_does_exact_arithmetic() {
    assert_eq!(calculate("1/3 + 1/6").unwrap()["result"], "1/2");
    assert_eq!(calculate("(2 + 3) * -4").unwrap()["result"], "-20");
    assert_eq!(calculate("0.1 + 0.2").unwrap()["result"], "3/10");
    assert_eq!(calculate("2^64").unwrap()["result"], "18446744073709551616");
    assert_eq!(calculate("1/4").unwrap()["decimal"], "0.25");
}

#[test]
fn the_calculator_reports_bad_expressions_as_invalid_input() {
    for expr in ["1/0", "2 +", "(1", "2^100000000", "two"] {
        match calculate(expr) {
            Err(PluginError::Guest {
                error: GuestError::InvalidInput(msg),
                ..
            }) => assert!(!msg.is_empty()),
            other => panic!("{expr}: expected invalid input, got {other:?}"),
        }
    }
}

#[test]
fn an_unknown_tool_is_not_found() {
    match calculator().call("weather", "{}") {
        Err(PluginError::Guest {
            error: GuestError::NotFound(_),
            ..
        }) => {}
        other => panic!("expected not found, got {other:?}"),
    }
}
