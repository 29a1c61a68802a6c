//! The OpenAPI 3.0 document served at `/openapi.json`, generated from the route table so it
//! lists exactly the routes the server serves, with the roles allowed on each
//! (`x-outpost-roles`) and the bearer security scheme on every protected route.

use serde_json::{Map, Value, json};

use super::routes::{Access, ROUTES, Route, path_parameters};

fn operation(route: &Route) -> Value {
    let mut parameters: Vec<Value> = path_parameters(route.path)
        .into_iter()
        .map(|name| {
            json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
        })
        .collect();
    parameters.extend(route.query.iter().map(|query| {
        json!({
            "name": query.name,
            "in": "query",
            "required": false,
            "description": query.description,
            "schema": { "type": query.schema_type },
        })
    }));
    let error = json!({ "$ref": "#/components/responses/Error" });
    let mut responses = Map::new();
    let success_content = if route.response_type.starts_with("application/json") {
        json!({ "application/json": { "schema": { "type": "object" } } })
    } else {
        json!({ route.response_type: { "schema": { "type": "string" } } })
    };
    responses.insert(
        route.success_status.to_string(),
        json!({ "description": "Success.", "content": success_content }),
    );
    let mut operation = Map::new();
    operation.insert("operationId".into(), json!(route.operation_id));
    operation.insert("summary".into(), json!(route.summary));
    match route.access {
        Access::Public => {
            operation.insert("security".into(), json!([]));
            operation.insert("x-outpost-roles".into(), json!(["public"]));
        }
        Access::Roles(roles) => {
            operation.insert("security".into(), json!([{ "bearer": [] }]));
            operation.insert(
                "x-outpost-roles".into(),
                json!(roles.iter().map(|role| role.as_str()).collect::<Vec<_>>()),
            );
            operation.insert(
                "description".into(),
                json!(format!(
                    "Roles: {}.",
                    roles.iter().map(|role| role.as_str()).collect::<Vec<_>>().join(", ")
                )),
            );
            responses.insert("401".into(), error.clone());
            responses.insert("403".into(), error.clone());
        }
    }
    if let Some(content_type) = route.request_body {
        let schema = if content_type == "application/json" {
            json!({ "type": "object" })
        } else {
            json!({ "type": "string", "format": "binary" })
        };
        operation.insert(
            "requestBody".into(),
            json!({ "required": true, "content": { content_type: { "schema": schema } } }),
        );
        responses.insert("400".into(), error.clone());
    }
    if !path_parameters(route.path).is_empty() {
        responses.insert("404".into(), error.clone());
    }
    responses.insert("500".into(), error);
    if !parameters.is_empty() {
        operation.insert("parameters".into(), Value::Array(parameters));
    }
    operation.insert("responses".into(), Value::Object(responses));
    Value::Object(operation)
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        if let Value::Object(methods) = entry {
            methods.insert(route.method.as_str().to_ascii_lowercase(), operation(route));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Outpost control API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The control server of Outpost: model registry, fleet inventory, \
                            users. Every route lists the roles allowed to call it in \
                            `x-outpost-roles`; denied requests are recorded for the audit trail.",
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "A token from `outpost users add`." },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "code"],
                    "properties": {
                        "error": { "type": "string", "description": "What was wrong." },
                        "code": { "type": "string", "description": "A stable code to branch on." },
                    },
                },
            },
            "responses": {
                "Error": {
                    "description": "The request failed; `error` says why.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
                },
            },
        },
        "paths": paths,
    })
}
