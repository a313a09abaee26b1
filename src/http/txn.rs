//! `POST /txn`: several keys compared and changed atomically, as one log
//! entry (API.md, "Transactions").
//!
//! ```json
//! {"compare": [{"key": "a", "value": "10"}],
//!  "success": [{"put": {"key": "a", "value": "0"}}, {"put": {"key": "b", "value": "10"}}],
//!  "failure": [{"get": {"key": "a"}}]}
//! ```

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

use super::client_api::{MAX_KEY_BYTES, params, read_body, write};
use super::errors::ApiError;
use super::{AppState, Forwarder};
use crate::auth::Role;
use crate::kv::{Command, Compare, Item, OpResult, Txn, TxnOp};

/// Where in the body a problem is, for error messages: `success[2].put`.
type At = String;

fn invalid(at: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_field", format!("{at}: {what}")).with("field", json!(at))
}

fn object<'a>(v: &'a Value, at: &str, example: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object().ok_or_else(|| invalid(at, format!("must be an object like {example}")))
}

fn only_fields(map: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(
            "unknown_field",
            format!("{at}: unknown field '{k}' (accepted: {})", allowed.join(", ")),
        )
        .with("field", json!(format!("{at}.{k}")))),
        None => Ok(()),
    }
}

fn string_field(map: &Map<String, Value>, at: &str, name: &str) -> Result<String, ApiError> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid(&format!("{at}.{name}"), "must be a string")),
        None => Err(ApiError::bad_request("missing_field", format!("{at}: missing field '{name}'"))
            .with("field", json!(format!("{at}.{name}")))),
    }
}

fn key_field(map: &Map<String, Value>, at: &str) -> Result<String, ApiError> {
    let key = string_field(map, at, "key")?;
    if key.is_empty() {
        return Err(ApiError::bad_request("invalid_key", format!("{at}.key: the key must not be empty")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::too_large(format!("{at}.key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len())));
    }
    Ok(key)
}

fn value_field(map: &Map<String, Value>, at: &str, max_value: usize) -> Result<String, ApiError> {
    let value = string_field(map, at, "value")?;
    if value.len() > max_value {
        return Err(ApiError::too_large(format!("{at}.value is {} bytes; the limit is {max_value}", value.len())));
    }
    Ok(value)
}

fn array<'a>(body: &'a Map<String, Value>, name: &str) -> Result<&'a [Value], ApiError> {
    match body.get(name) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(invalid(name, "must be an array")),
    }
}

/// `{"key", "value"}`, `{"key", "revision"}` or `{"key", "exists"}`.
fn parse_compare(v: &Value, at: At, max_value: usize) -> Result<Compare, ApiError> {
    let map = object(v, &at, r#"{"key": "a", "value": "10"}"#)?;
    only_fields(map, &at, &["key", "value", "revision", "exists"])?;
    let key = key_field(map, &at)?;
    let given: Vec<&str> = ["value", "revision", "exists"].into_iter().filter(|f| map.contains_key(*f)).collect();
    match given.as_slice() {
        ["value"] => Ok(Compare::Value { key, value: value_field(map, &at, max_value)? }),
        ["revision"] => match super::client_api::whole_number(&map["revision"]) {
            Some(revision) => Ok(Compare::Revision { key, revision }),
            None => {
                Err(invalid(&format!("{at}.revision"), "must be a non-negative integer (0: the key does not exist)"))
            }
        },
        ["exists"] => match map["exists"].as_bool() {
            Some(exists) => Ok(Compare::Exists { key, exists }),
            None => Err(invalid(&format!("{at}.exists"), "must be true or false")),
        },
        _ => Err(invalid(&at, "give exactly one of 'value', 'revision' and 'exists' beside 'key'")),
    }
}

/// `{"put": {"key", "value"}}`, `{"delete": {"key"}}` or `{"get": {"key"}}`.
fn parse_op(v: &Value, at: At, max_value: usize) -> Result<TxnOp, ApiError> {
    let map = object(v, &at, r#"{"put": {"key": "a", "value": "0"}}"#)?;
    let (kind, args) = match map.iter().next() {
        Some((k, a)) if map.len() == 1 => (k.as_str(), a),
        _ => return Err(invalid(&at, "must have exactly one of 'put', 'delete' and 'get'")),
    };
    let at = format!("{at}.{kind}");
    match kind {
        "put" => {
            let args = object(args, &at, r#"{"key": "a", "value": "0"}"#)?;
            only_fields(args, &at, &["key", "value"])?;
            Ok(TxnOp::Put { key: key_field(args, &at)?, value: value_field(args, &at, max_value)? })
        }
        "delete" | "get" => {
            let args = object(args, &at, r#"{"key": "a"}"#)?;
            only_fields(args, &at, &["key"])?;
            let key = key_field(args, &at)?;
            Ok(if kind == "get" { TxnOp::Get { key } } else { TxnOp::Delete { key } })
        }
        other => Err(ApiError::bad_request(
            "unknown_field",
            format!("{at}: unknown operation '{other}' (accepted: put, delete, get)"),
        )
        .with("field", json!(at))),
    }
}

/// The body of `POST /txn`, strictly: unknown fields are refused (a typo
/// must never turn a guarded write into an unguarded one).
pub fn parse_txn_body(body: &[u8], max_value: usize, max_ops: usize) -> Result<Txn, ApiError> {
    let example = r#"{"compare": [...], "success": [...], "failure": [...]}"#;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("invalid_json", format!("the body must be a JSON object like {example}")));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(ApiError::bad_request("invalid_json", format!("the body must be a JSON object like {example}")));
    };
    only_fields(&map, "body", &["compare", "success", "failure"])?;
    let (compare, success, failure) = (array(&map, "compare")?, array(&map, "success")?, array(&map, "failure")?);
    let ops = success.len() + failure.len();
    if compare.len() > max_ops || ops > max_ops {
        return Err(ApiError::bad_request(
            "too_many_operations",
            format!(
                "{} comparisons and {ops} operations; a transaction may have at most {max_ops} of each (--max-txn-ops)",
                compare.len()
            ),
        ));
    }
    let ops = |name: &str, list: &[Value]| -> Result<Vec<TxnOp>, ApiError> {
        list.iter().enumerate().map(|(i, v)| parse_op(v, format!("{name}[{i}]"), max_value)).collect()
    };
    Ok(Txn {
        compare: compare
            .iter()
            .enumerate()
            .map(|(i, v)| parse_compare(v, format!("compare[{i}]"), max_value))
            .collect::<Result<_, _>>()?,
        success: ops("success", success)?,
        failure: ops("failure", failure)?,
    })
}

/// The answer to a transaction that ran.
pub fn txn_response(succeeded: bool, revision: u64, results: Vec<OpResult>) -> HttpResponse {
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            OpResult::Put { key, revision } => json!({"put": {"key": key, "revision": revision}}),
            OpResult::Delete { key, deleted } => json!({"delete": {"key": key, "deleted": deleted}}),
            OpResult::Get { key, item: Some(Item { value, revision, .. }) } => {
                json!({"get": {"key": key, "found": true, "value": value, "revision": revision}})
            }
            OpResult::Get { key, item: None } => json!({"get": {"key": key, "found": false}}),
        })
        .collect();
    HttpResponse::Ok().json(json!({"succeeded": succeeded, "revision": revision, "results": results}))
}

/// `POST /txn`: needs the write role if any operation writes, else read.
pub async fn post_txn(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    // The role depends on the body; a token is still required before the
    // body is read, so an anonymous client cannot make the node read it.
    state.authorize(&req, Role::Read)?;
    params(&req, &[])?;
    let body = read_body(&req, payload, state.client_body_limit(), state.settings.request_read_timeout).await?;
    let txn = parse_txn_body(&body, state.settings.max_value_bytes, state.settings.max_txn_ops)?;
    if txn.writes() {
        state.authorize(&req, Role::Write)?;
    }
    let command = super::client_api::in_session(&req, Command::Txn(txn))?;
    write(&state, &fwd, &req, body, command).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Txn, ApiError> {
        parse_txn_body(body.as_bytes(), 8, 3)
    }

    #[test]
    fn a_transaction_body_is_parsed_strictly() {
        let t = parse(
            r#"{"compare": [{"key": "a", "value": "10"}, {"key": "b", "revision": 0}, {"key": "c", "exists": true}],
                "success": [{"put": {"key": "a", "value": "0"}}, {"delete": {"key": "c"}}],
                "failure": [{"get": {"key": "a"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            t,
            Txn {
                compare: vec![
                    Compare::Value { key: "a".into(), value: "10".into() },
                    Compare::Revision { key: "b".into(), revision: 0 },
                    Compare::Exists { key: "c".into(), exists: true },
                ],
                success: vec![TxnOp::Put { key: "a".into(), value: "0".into() }, TxnOp::Delete { key: "c".into() }],
                failure: vec![TxnOp::Get { key: "a".into() }],
            }
        );
        assert_eq!(parse("{}").unwrap(), Txn::default());
        let code = |b: &str| parse(b).unwrap_err().code;
        assert_eq!(code(""), "invalid_json");
        assert_eq!(code("[1]"), "invalid_json");
        assert_eq!(code(r#"{"compare": [], "sucess": []}"#), "unknown_field");
        assert_eq!(code(r#"{"compare": {}}"#), "invalid_field");
        assert_eq!(code(r#"{"compare": [{"key": "a"}]}"#), "invalid_field");
        assert_eq!(code(r#"{"compare": [{"key": "a", "value": "1", "revision": 2}]}"#), "invalid_field");
        assert_eq!(code(r#"{"compare": [{"key": "a", "revision": -1}]}"#), "invalid_field");
        assert_eq!(code(r#"{"compare": [{"key": "a", "exists": "yes"}]}"#), "invalid_field");
        assert_eq!(code(r#"{"compare": [{"key": "a", "valu": "1"}]}"#), "unknown_field");
        assert_eq!(code(r#"{"compare": [{"value": "1"}]}"#), "missing_field");
        assert_eq!(code(r#"{"compare": [{"key": "", "value": "1"}]}"#), "invalid_key");
        assert_eq!(code(r#"{"success": [{"put": {"key": "a"}}]}"#), "missing_field");
        assert_eq!(code(r#"{"success": [{"put": {"key": "a", "value": 1}}]}"#), "invalid_field");
        assert_eq!(code(r#"{"success": [{"put": {"key": "a", "value": "123456789"}}]}"#), "too_large");
        assert_eq!(code(r#"{"success": [{"put": {"key": "a", "value": "1"}, "get": {"key": "a"}}]}"#), "invalid_field");
        assert_eq!(code(r#"{"success": [{"upsert": {"key": "a"}}]}"#), "unknown_field");
        assert_eq!(code(r#"{"success": [{"delete": {"key": "a", "prefix": true}}]}"#), "unknown_field");
        assert_eq!(code(r#"{"success": ["put"]}"#), "invalid_field");
        let four = r#"{"get": {"key": "a"}}"#.repeat(4).replace("}{", "},{");
        assert_eq!(code(&format!(r#"{{"success": [{four}]}}"#)), "too_many_operations");
        let two = r#"{"get": {"key": "a"}}"#.repeat(2).replace("}{", "},{");
        assert_eq!(code(&format!(r#"{{"success": [{two}], "failure": [{two}]}}"#)), "too_many_operations");
        let err = parse(r#"{"success": [{"get": {"key": "a"}}, {"put": {"key": "b", "value": 5}}]}"#).unwrap_err();
        assert!(err.message.contains("success[1].put.value"), "{}", err.message);
    }
}
