//! A small client for Confluent-compatible schema registries over plain HTTP/1.1:
//! what `tributary schemas` and the Avro decoding of Kafka records need.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::RegistryError;

/// Sends one request; returns the status and the JSON reply (`Null` when not JSON).
async fn request(
    url: &str,
    method: hyper::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), RegistryError> {
    let io = |e: &dyn std::fmt::Display| RegistryError::Client(format!("{url}{path}: {e}"));
    let authority = url
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .ok_or_else(|| io(&"only http:// registry URLs are supported for now (no TLS yet)"))?;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| io(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| io(&e))?;
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("accept", "application/vnd.schemaregistry.v1+json");
    let body = match body {
        Some(b) => {
            builder = builder.header("content-type", "application/vnd.schemaregistry.v1+json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let request = builder.body(Full::new(body)).map_err(|e| io(&e))?;
    let response = sender.send_request(request).await.map_err(|e| io(&e))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| io(&e))?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    ))
}

/// POSTs a JSON body; returns the status and the JSON reply.
pub(crate) async fn post_json(
    url: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value), RegistryError> {
    request(url, hyper::Method::POST, path, Some(body)).await
}

/// The schema text registered under `id` (`GET /schemas/ids/{id}`).
pub async fn schema_by_id(url: &str, id: u32) -> Result<String, RegistryError> {
    let (status, reply) =
        request(url, hyper::Method::GET, &format!("/schemas/ids/{id}"), None).await?;
    match (status, reply["schema"].as_str()) {
        (200, Some(schema)) => Ok(schema.to_string()),
        _ => Err(RegistryError::Client(format!(
            "{url}: schema id {id}: HTTP {status}: {}",
            reply["message"]
                .as_str()
                .unwrap_or("no schema in the reply")
        ))),
    }
}
