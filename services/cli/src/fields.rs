//! `usersync fields ID`: the source properties the tenant's directory carries,
//! to write a field mapping from.

use serde_json::Value;
use usersync_admin::status::FieldInfo as DiscoveredField;
use usersync_store::Store;

/// Longest example shown in the table; the JSON output has it whole.
const EXAMPLE_WIDTH: usize = 48;

pub async fn show(store: &Store, id: &str, json: bool) -> anyhow::Result<()> {
    let fields = usersync_admin::status::fields(store, id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&fields)?);
        return Ok(());
    }
    if fields.is_empty() {
        println!("no fields discovered for {id} yet: they are recorded by each successful sync (`usersync resync {id}`)");
        return Ok(());
    }
    print!("{}", table(&fields));
    Ok(())
}

fn table(fields: &[DiscoveredField]) -> String {
    let width = fields.iter().map(|f| f.field.len()).max().unwrap_or(0).max(5);
    let mut text = format!("{:<width$}  {:>7}  EXAMPLE\n", "FIELD", "USERS");
    for f in fields {
        text.push_str(&format!(
            "{:<width$}  {:>7}  {}\n",
            f.field,
            f.users,
            example(&f.example)
        ));
    }
    text
}

/// Strings without quotes, anything else as JSON; long values cut with `…`.
fn example(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let text = text.replace(['\n', '\r', '\t'], " ");
    if text.chars().count() <= EXAMPLE_WIDTH {
        return text;
    }
    let cut: String = text.chars().take(EXAMPLE_WIDTH - 1).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn table_aligns_and_cuts_long_examples() {
        let fields = [
            DiscoveredField {
                field: "mail".into(),
                users: 120,
                example: json!("a@x"),
            },
            DiscoveredField {
                field: "accountEnabled".into(),
                users: 7,
                example: json!(true),
            },
            DiscoveredField {
                field: "jobTitle".into(),
                users: 1,
                example: json!("x".repeat(80)),
            },
        ];
        let text = table(&fields);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "FIELD             USERS  EXAMPLE");
        assert_eq!(lines[1], "mail                120  a@x");
        assert_eq!(lines[2], "accountEnabled        7  true");
        assert!(
            lines[3].ends_with('…') && lines[3].chars().count() < 80 + 20,
            "{}",
            lines[3]
        );
    }
}
