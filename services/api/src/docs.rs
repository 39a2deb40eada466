//! A readable reference of the API at `/docs`, rendered here from the same
//! OpenAPI document as `/openapi.json`: plain HTML, no script, no CDN.

use axum::response::Html;
use serde_json::Value;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `#/components/schemas/X` as `X`, arrays as `[X]`, inline objects as `object`.
fn schema_name(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return reference.rsplit('/').next().unwrap_or(reference).to_owned();
    }
    match schema.get("type") {
        Some(Value::String(kind)) if kind == "array" => {
            format!("[{}]", schema.get("items").map_or("?".to_owned(), schema_name))
        }
        Some(Value::String(kind)) => kind.clone(),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => ["oneOf", "anyOf", "allOf"]
            .iter()
            .find_map(|k| schema.get(*k).and_then(Value::as_array))
            .map(|list| list.iter().map(schema_name).collect::<Vec<_>>().join(" | "))
            .unwrap_or_else(|| "object".to_owned()),
    }
}

fn body_schema(content: Option<&Value>) -> String {
    content
        .and_then(|c| c.get("application/json"))
        .and_then(|j| j.get("schema"))
        .map(schema_name)
        .unwrap_or_default()
}

pub fn reference_page(document: &utoipa::openapi::OpenApi) -> Html<String> {
    let doc = serde_json::to_value(document).unwrap_or(Value::Null);
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>usersync API reference</title>\
         <style>body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#1d2330;line-height:1.45}\
         code{background:#f1f3f6;padding:0 .25em;border-radius:3px}section{border-top:1px solid #d6dae1;padding:.5rem 0}\
         .m{display:inline-block;min-width:4.5em;font-weight:700}table{border-collapse:collapse}\
         td,th{border:1px solid #d6dae1;padding:.2rem .5rem;text-align:left;vertical-align:top}</style></head><body>",
    );
    let info = &doc["info"];
    html.push_str(&format!(
        "<h1>{}</h1><p>{}</p><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {}).</p>",
        escape(info["title"].as_str().unwrap_or("API")),
        escape(info["description"].as_str().unwrap_or("")),
        escape(doc["openapi"].as_str().unwrap_or("3.1"))
    ));
    if let Some(paths) = doc["paths"].as_object() {
        for (path, operations) in paths {
            let Some(operations) = operations.as_object() else {
                continue;
            };
            for (method, op) in operations {
                if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    continue;
                }
                html.push_str(&format!(
                    "<section><h2><span class=\"m\">{}</span> <code>{}</code></h2>",
                    method.to_uppercase(),
                    escape(path)
                ));
                for key in ["summary", "description"] {
                    if let Some(text) = op[key].as_str() {
                        html.push_str(&format!("<p>{}</p>", escape(text)));
                    }
                }
                if let Some(params) = op["parameters"].as_array() {
                    html.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th>about</th></tr>");
                    for p in params {
                        html.push_str(&format!(
                            "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                            escape(p["name"].as_str().unwrap_or("")),
                            if p["required"].as_bool() == Some(true) {
                                " (required)"
                            } else {
                                ""
                            },
                            escape(p["in"].as_str().unwrap_or("")),
                            escape(&p.get("schema").map(schema_name).unwrap_or_default()),
                            escape(p["description"].as_str().unwrap_or(""))
                        ));
                    }
                    html.push_str("</table>");
                }
                if let Some(body) = op.get("requestBody") {
                    html.push_str(&format!(
                        "<p>Body: <code>{}</code> {}</p>",
                        escape(&body_schema(body.get("content"))),
                        escape(body["description"].as_str().unwrap_or(""))
                    ));
                }
                if let Some(responses) = op["responses"].as_object() {
                    html.push_str("<table><tr><th>status</th><th>body</th><th>meaning</th></tr>");
                    for (status, response) in responses {
                        html.push_str(&format!(
                            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                            escape(status),
                            escape(&body_schema(response.get("content"))),
                            escape(response["description"].as_str().unwrap_or(""))
                        ));
                    }
                    html.push_str("</table>");
                }
                html.push_str("</section>");
            }
        }
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        html.push_str("<h2>Schemas</h2>");
        for (name, schema) in schemas {
            html.push_str(&format!("<section><h3 id=\"{0}\">{0}</h3>", escape(name)));
            if let Some(text) = schema["description"].as_str() {
                html.push_str(&format!("<p>{}</p>", escape(text)));
            }
            if let Some(props) = schema["properties"].as_object() {
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                html.push_str("<table><tr><th>field</th><th>type</th><th>about</th></tr>");
                for (field, prop) in props {
                    html.push_str(&format!(
                        "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
                        escape(field),
                        if required.contains(&field.as_str()) {
                            ""
                        } else {
                            " (optional)"
                        },
                        escape(&schema_name(prop)),
                        escape(prop["description"].as_str().unwrap_or(""))
                    ));
                }
                html.push_str("</table>");
            }
            html.push_str("</section>");
        }
    }
    html.push_str("</body></html>");
    Html(html)
}
