//! HTTP hardening: clients that send the wrong media type, or send slowly, get a clear answer
//! or are cut off instead of holding the server's connections.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app, spawn_app_with, transfer};

#[tokio::test]
async fn a_body_that_is_not_json_is_415_and_stores_nothing() {
    let app = spawn_app().await;
    let body = transfer("a", "b", "1.00").to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = app
            .client
            .post(app.url("/v1/transfers"))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", "k")
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        let reply = app.send(request).await;
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {}",
            reply.body
        );
        assert_eq!(reply.body["code"], "unsupported_media_type");
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    let account = app
        .send(
            app.client
                .post(app.url("/v1/accounts"))
                .bearer_auth(&app.api_key)
                .header("Content-Type", "text/plain")
                .body(json!({"id": "a", "currency": "USD"}).to_string()),
        )
        .await;
    assert_eq!(account.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(app.count("SELECT count(*) FROM transfers").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM accounts").await, 0);
    // The same body as JSON (charset allowed) is taken.
    let reply = app
        .send(
            app.client
                .post(app.url("/v1/accounts"))
                .bearer_auth(&app.api_key)
                .header("Content-Type", "application/json; charset=utf-8")
                .body(json!({"id": "a", "currency": "USD"}).to_string()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

/// Reads until the server closes the connection; returns what it sent and how long it took.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_client_that_sends_half_a_request_head_is_cut_off() {
    let app = spawn_app_with(|c| c.http.header_read_timeout = Duration::from_millis(500)).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: ferry\r\nX-Slow: ")
        .await
        .expect("write half a head");
    let (_, elapsed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        elapsed < Duration::from_millis(1_500),
        "closed after {elapsed:?}"
    );
    // A connection that never sends a byte goes the same way.
    let mut idle = TcpStream::connect(&address).await.expect("connect");
    let (_, elapsed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        elapsed < Duration::from_millis(1_500),
        "closed after {elapsed:?}"
    );
    // Prompt clients are served as before.
    let health = app.send(app.client.get(app.url("/healthz"))).await;
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_trickles_its_body_gets_408_and_is_cut_off() {
    let app = spawn_app_with(|c| {
        c.intake.db_timeout = Duration::from_millis(500);
        c.http.request_timeout = Duration::from_secs(1);
    })
    .await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "POST /v1/accounts HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\"",
        app.api_key
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    // Read while writing, so the answer is taken in before the server resets the socket.
    let reading = tokio::spawn(async move {
        let mut received = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut received)).await;
        (
            String::from_utf8_lossy(&received).into_owned(),
            started.elapsed(),
        )
    });
    // One byte every 200 ms: never idle long, never finished (100 bytes were announced).
    while !reading.is_finished() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if writer.write_all(b" ").await.is_err() {
            break;
        }
    }
    let (response, elapsed) = reading.await.expect("reader");
    assert!(
        elapsed < Duration::from_secs(3),
        "connection open for {elapsed:?}"
    );
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("request_timeout"), "{response}");
    assert!(response.contains("application/problem+json"), "{response}");
    assert_eq!(app.count("SELECT count(*) FROM accounts").await, 0);
}

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_closes() {
    let app = spawn_app_with(|c| c.http.connections_max = 2).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    // Two idle connections take both slots.
    let first = TcpStream::connect(&address).await.expect("connect");
    let _second = TcpStream::connect(&address).await.expect("connect");
    let mut third = TcpStream::connect(&address)
        .await
        .expect("connect (backlog)");
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = [0u8; 256];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buffer)).await;
    assert!(waited.is_err(), "served beyond the connection limit");
    drop(first);
    let (response, _) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
