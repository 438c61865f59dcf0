//! `key create|ls|get|rotate|revoke`: the daemon's API keys (`/keys`).

use hyper::Method;
use tartarus_types::{ApiKeyInfo, CreateKey, CreatedKey, List, RotateKey};

use super::{CmdError, Ctx};
use crate::cli::KeyCreateArgs;
use crate::client::{encode_segment, Body, ClientError};
use crate::output::{age, key_details, key_table, now_unix, print, print_json};

/// The key id of an argument: the id itself, or a whole `tts_` key pasted by mistake (its id
/// is taken, the secret never leaves this process).
pub fn key_id(arg: &str) -> Result<String, CmdError> {
    if arg.starts_with(tartarus_auth::apikey::PREFIX) {
        return tartarus_auth::apikey::ApiKey::parse(arg)
            .map(|k| k.id().to_string())
            .map_err(|e| CmdError::Usage(format!("'{}…': {e}", &arg[..arg.len().min(12)])));
    }
    if arg.len() == tartarus_auth::apikey::ID_LEN && arg.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        Ok(arg.to_string())
    } else {
        Err(CmdError::Usage(format!(
            "'{arg}' is not a key id: 8 letters and digits (the characters after tts_), as \
             `tartarus key ls` shows them"
        )))
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, CmdError> {
    Ok(serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))?)
}

/// Prints a new key: alone on stdout (so `KEY=$(tartarus key create ...)` works), and the
/// warning that it will not be shown again on stderr.
fn print_created(ctx: &Ctx, body: serde_json::Value, what: &str) -> Result<CreatedKey, CmdError> {
    let created: CreatedKey = decode(body.clone())?;
    if ctx.json() {
        print_json(&body)?;
    } else {
        print(&format!("{}\n", created.key))?;
    }
    let k = &created.info;
    let expiry = match k.expires_at {
        Some(e) => format!("expires in {}", age((e - now_unix()).max(0) as u64)),
        None => "never expires".into(),
    };
    eprintln!(
        "{what} key {} ('{}', tenant {}, role {}, {expiry}).\n\
         This is the only time the key is shown: store it now, it cannot be shown again.",
        k.id, k.name, k.tenant, k.role
    );
    Ok(created)
}

pub async fn create(ctx: &Ctx, a: KeyCreateArgs) -> Result<i32, CmdError> {
    if a.name.is_empty() || a.name.chars().count() > 64 {
        return Err(CmdError::Usage("--name must be 1-64 characters".into()));
    }
    let req = CreateKey {
        name: a.name,
        role: a.role,
        tenant: a.tenant,
        expires_in_s: a.expires,
    };
    let body = ctx
        .client
        .json_value(Method::POST, "/keys", Some(&req))
        .await?;
    print_created(ctx, body, "Created")?;
    Ok(0)
}

pub async fn ls(ctx: &Ctx) -> Result<i32, CmdError> {
    let body: serde_json::Value = ctx.client.get("/keys").await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let list: List<ApiKeyInfo> = decode(body)?;
    print(&key_table(&list.items, now_unix()))?;
    Ok(0)
}

pub async fn get(ctx: &Ctx, id: &str) -> Result<i32, CmdError> {
    let id = key_id(id)?;
    let body: serde_json::Value = ctx
        .client
        .get(&format!("/keys/{}", encode_segment(&id)))
        .await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let k: ApiKeyInfo = decode(body)?;
    print(&key_details(&k, now_unix()))?;
    Ok(0)
}

pub async fn rotate(ctx: &Ctx, id: &str, overlap: Option<u64>) -> Result<i32, CmdError> {
    let id = key_id(id)?;
    let body = ctx
        .client
        .json_value(
            Method::POST,
            &format!("/keys/{}/rotate", encode_segment(&id)),
            Some(&RotateKey { overlap_s: overlap }),
        )
        .await?;
    print_created(ctx, body, "Rotated: new")?;
    match overlap {
        Some(0) => eprintln!("The old key {id} stopped working."),
        Some(s) => eprintln!("The old key {id} keeps working for {}.", age(s)),
        None => {
            eprintln!("The old key {id} keeps working for the daemon's overlap (1h by default).")
        }
    }
    Ok(0)
}

pub async fn revoke(ctx: &Ctx, ids: &[String]) -> Result<i32, CmdError> {
    let mut code = 0;
    let mut revoked = Vec::new();
    for arg in ids {
        let result = match key_id(arg) {
            Ok(id) => ctx
                .client
                .send(
                    Method::DELETE,
                    &format!("/keys/{}", encode_segment(&id)),
                    Body::Empty,
                )
                .await
                .map_err(CmdError::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(resp) => {
                let bytes = crate::client::read_body(resp).await?;
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    // The contract answers the revoked key; a bare 204 is fine too.
                    let id = key_id(arg)?;
                    if !ctx.json() {
                        print(&format!("Revoked {id}\n"))?;
                    }
                    continue;
                }
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ClientError::Decode(e.to_string()))?;
                if ctx.json() {
                    revoked.push(v);
                } else {
                    let k: ApiKeyInfo = decode(v)?;
                    print(&format!("Revoked {} ('{}')\n", k.id, k.name))?;
                }
            }
            Err(e) => {
                // A 401/403 applies to every id: stop with its hint.
                if matches!(&e, CmdError::Client(c) if c.auth_status().is_some()) {
                    return Err(e);
                }
                eprintln!("tartarus: {arg}: {e}");
                code = 1;
            }
        }
    }
    if ctx.json() {
        // One id: the API's body as is; several: an array of them.
        match revoked.len() {
            0 => {}
            1 if ids.len() == 1 => print_json(&revoked[0])?,
            _ => print_json(&revoked)?,
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids() {
        let key = tartarus_auth::apikey::ApiKey::generate().unwrap();
        assert_eq!(key_id(&key.expose()).unwrap(), key.id());
        assert_eq!(key_id("1a2B3c4D").unwrap(), "1a2B3c4D");
        assert!(key_id("1a2B3c4").is_err());
        assert!(key_id("../etc/x").is_err());
        let mut typo = key.expose();
        typo.pop();
        typo.push('!');
        assert!(matches!(key_id(&typo), Err(CmdError::Usage(_))));
    }
}
