use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{create_account_in, create_ledger, create_ledger_key, spawn_app, transfer};

#[tokio::test]
async fn an_account_is_created_with_a_zero_balance_at_its_currency_scale() {
    let app = spawn_app().await;
    let reply = app
        .post_json(
            "/v1/accounts",
            &json!({"id": "wallet:1", "currency": "USD", "metadata": {"owner": "ann"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["id"], "wallet:1");
    assert_eq!(reply.body["balance"], "0.00");
    assert_eq!(reply.body["allow_overdraft"], false);
    let reply = app.get("/v1/accounts/wallet:1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["currency"], "USD");
    assert!(reply.body["created_at"].is_string());
}

#[tokio::test]
async fn an_account_without_an_id_gets_one() {
    let app = spawn_app().await;
    let reply = app
        .post_json("/v1/accounts", &json!({"currency": "JPY"}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert!(
        reply.body["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("acc_"))
    );
    assert_eq!(reply.body["balance"], "0");
}

#[tokio::test]
async fn creating_an_existing_account_is_a_conflict() {
    let app = spawn_app().await;
    app.create_account("a", "USD", false).await;
    let reply = app
        .post_json("/v1/accounts", &json!({"id": "a", "currency": "EUR"}))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.body["code"], "account_exists");
    assert_eq!(app.balance("a").await, "0.00");
}

#[tokio::test]
async fn bad_account_requests_are_refused_and_store_nothing() {
    let app = spawn_app().await;
    let cases = [
        (json!({"currency": "usd"}), "invalid_currency"),
        (json!({"currency": "XAU"}), "invalid_currency"),
        (json!({"id": "a b", "currency": "USD"}), "invalid_account"),
        (json!({"id": "", "currency": "USD"}), "invalid_account"),
        (json!({"currency": "USD", "color": "red"}), "invalid_body"),
        (
            json!({"currency": "USD", "allow_overdraft": "yes"}),
            "invalid_body",
        ),
        (json!({}), "invalid_body"),
    ];
    for (body, code) in cases {
        let reply = app.post_json("/v1/accounts", &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.body["code"], code, "{body}");
    }
    assert_eq!(app.count("SELECT count(*) FROM accounts").await, 0);
}

#[tokio::test]
async fn an_unknown_account_is_not_found() {
    let app = spawn_app().await;
    let reply = app.get("/v1/accounts/nobody").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body["code"], "account_not_found");
    let reply = app.get("/v1/accounts/nobody/entries").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn entries_are_listed_newest_first_with_a_cursor() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("a", "USD", false).await;
    for n in 1..=5 {
        let reply = app
            .post_transfer(
                &format!("k{n}"),
                &transfer("treasury", "a", &format!("{n}.00")),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        app.run_until_idle(Duration::from_secs(20)).await;
    }
    let page = app.get("/v1/accounts/a/entries?limit=2").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(entry_fields(&page.body, "amount"), ["5.00", "4.00"]);
    let cursor = page.body["next_cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let page = app
        .get(&format!("/v1/accounts/a/entries?limit=10&cursor={cursor}"))
        .await;
    assert_eq!(entry_fields(&page.body, "amount"), ["3.00", "2.00", "1.00"]);
    assert!(page.body.get("next_cursor").is_none());
    let treasury = app.get("/v1/accounts/treasury/entries").await;
    assert_eq!(treasury.body["entries"][0]["amount"], "-5.00");
    assert_eq!(treasury.body["entries"][0]["side"], "debit");
    // A cursor is an entry id as this API returned it: digits only (docs/openapi.json's
    // pattern), so a sign is refused even though it would parse as a number.
    for bad in [
        "limit=0",
        "limit=501",
        "cursor=abc",
        "limit=x",
        "cursor=%2B3",
        "cursor=-1",
        "cursor=",
    ] {
        let reply = app.get(&format!("/v1/accounts/a/entries?{bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.body["code"], "invalid_body");
    }
}

/// Entries of one posting transaction share their `created_at`, and the account's entries are
/// read by `(created_at, id)`: a page that ends inside such a group must go on with the rest of
/// it, not skip to an older time.
#[tokio::test]
async fn pages_of_entries_that_share_a_posting_time_skip_and_repeat_nothing() {
    let app = spawn_app().await;
    app.create_account("treasury", "USD", true).await;
    app.create_account("a", "USD", false).await;
    let items: Vec<serde_json::Value> = (1..=7)
        .map(|n| {
            json!({"idempotency_key": format!("tie-{n}"), "from_account": "treasury",
                   "to_account": "a", "amount": format!("{n}.00"), "currency": "USD"})
        })
        .collect();
    let reply = app
        .post_json("/v1/transfers/batch", &json!({"transfers": items}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    app.run_until_idle(Duration::from_secs(20)).await;
    let whole = app.get("/v1/accounts/a/entries?limit=100").await.body;
    let times = entry_fields(&whole, "created_at");
    assert_eq!(times.len(), 7);
    assert!(
        times.windows(2).any(|w| w[0] == w[1]),
        "the batch posted in one transaction, so its entries share a time: {times:?}"
    );
    let mut paged = Vec::new();
    let mut path = "/v1/accounts/a/entries?limit=2".to_owned();
    loop {
        let page = app.get(&path).await.body;
        paged.extend(entry_fields(&page, "id"));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/accounts/a/entries?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, entry_fields(&whole, "id"));
    let numbers: Vec<i64> = paged.iter().map(|id| id.parse().expect("id")).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] > w[1]),
        "newest first: {numbers:?}"
    );
}

/// One field of every entry on a page of `GET /v1/accounts/{id}/entries`, in page order.
fn entry_fields(page: &serde_json::Value, field: &str) -> Vec<String> {
    listed_fields(page, "entries", field)
}

/// One string field of every item of the list `list` on a page, in page order.
fn listed_fields(page: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    page[list]
        .as_array()
        .unwrap_or_else(|| panic!("a page without {list}: {page}"))
        .iter()
        .map(|item| {
            item[field]
                .as_str()
                .unwrap_or_else(|| panic!("an item of {list} without {field}: {item}"))
                .to_owned()
        })
        .collect()
}

/// Found by Schemathesis (.ci/schemathesis.sh): a metadata number near the limits of f64
/// (`1.7976931348623157e308`) was stored — jsonb keeps it as an exact numeric — but could not
/// be read back (serde_json's default float parsing overflowed on PostgreSQL's 309-digit
/// rendering), so the account was created and answered `500`, and every read of it after
/// that was `500` too. Every JSON number ferry accepts must read back.
#[tokio::test]
async fn metadata_numbers_at_the_limits_of_f64_read_back() {
    let app = spawn_app().await;
    let metadata = json!({
        "max": f64::MAX, "min": f64::MIN, "tiny": 5e-324, "big": 20328866308736233472u128 as f64,
        "u64": u64::MAX, "i64": i64::MIN,
    });
    let reply = app
        .post_json(
            "/v1/accounts",
            &json!({"id": "limits", "currency": "USD", "metadata": metadata}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["metadata"], metadata);
    let read = app.get("/v1/accounts/limits").await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["metadata"], metadata);

    app.create_account("other", "USD", true).await;
    let transfer = app
        .post_transfer(
            "limits-1",
            &json!({"from_account": "other", "to_account": "limits",
                "amount": "1.00", "currency": "USD", "metadata": metadata}),
        )
        .await;
    assert_eq!(transfer.status, StatusCode::ACCEPTED, "{}", transfer.body);
    assert_eq!(transfer.body["metadata"], metadata);
}

/// Creates an account with `body` through the API; its JSON.
async fn open_account(app: &crate::helpers::TestApp, body: serde_json::Value) -> serde_json::Value {
    let reply = app.post_json("/v1/accounts", &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body
}

/// The ids of a page of `GET /v1/accounts`.
fn listed_ids(page: &serde_json::Value) -> Vec<String> {
    listed_fields(page, "accounts", "id")
}

/// Every id `GET /v1/accounts{query}` lists as `api_key`, following `next_after`; each page's
/// length too.
async fn list_all_as(
    app: &crate::helpers::TestApp,
    api_key: &str,
    query: &str,
) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut pages) = (Vec::new(), Vec::new());
    let mut after: Option<String> = None;
    loop {
        let cursor = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let reply = app
            .get_as(api_key, &format!("/v1/accounts?{query}{cursor}"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.body);
        let page = listed_ids(&reply.body);
        pages.push(page.len());
        ids.extend(page);
        match reply.body["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return (ids, pages),
        }
        assert!(pages.len() <= 100, "paging does not end: {pages:?}");
    }
}

#[tokio::test]
async fn accounts_are_listed_by_id_across_pages_without_gaps_or_duplicates() {
    let app = spawn_app().await;
    // Created out of id order: the listing is by id, not by creation.
    let mut expected = Vec::new();
    for i in [7, 3, 11, 0, 9, 1, 10, 5, 2, 8, 4, 6] {
        let id = format!("acct-{i:02}");
        app.create_account(&id, "USD", false).await;
        expected.push(id);
    }
    expected.sort();

    // A short last page ends the listing; so does an empty page after a full one.
    let (ids, pages) = list_all_as(&app, &app.api_key, "limit=5").await;
    assert_eq!(ids, expected);
    assert_eq!(pages, [5, 5, 2]);
    let (ids, pages) = list_all_as(&app, &app.api_key, "limit=4").await;
    assert_eq!(ids, expected);
    assert_eq!(pages, [4, 4, 4, 0]);
    // The default page holds them all and says there is no more.
    let reply = app.get("/v1/accounts").await;
    assert_eq!(listed_ids(&reply.body), expected);
    assert!(reply.body.get("next_after").is_none(), "{}", reply.body);
    // An account as `GET /v1/accounts/{id}` shows it.
    let one = app.get("/v1/accounts/acct-00").await;
    assert_eq!(reply.body["accounts"][0], one.body);
    // `after` need not be a listed id: it is a position.
    let reply = app.get("/v1/accounts?after=acct-05a&limit=2").await;
    assert_eq!(listed_ids(&reply.body), ["acct-06", "acct-07"]);
}

#[tokio::test]
async fn accounts_are_filtered_by_status_currency_metadata_and_creation_time() {
    let app = spawn_app().await;
    open_account(
        &app,
        json!({"id": "ann-usd", "currency": "USD", "metadata": {"owner": "ann", "tier": "gold"}}),
    )
    .await;
    let ann_eur = open_account(
        &app,
        json!({"id": "ann-eur", "currency": "EUR", "metadata": {"owner": "ann"}}),
    )
    .await;
    open_account(
        &app,
        json!({"id": "bob-usd", "currency": "USD", "metadata": {"owner": "bob", "tier": "gold"}}),
    )
    .await;
    open_account(
        &app,
        json!({"id": "cy-usd", "currency": "USD", "metadata": {"tier": 3, "nested": {"a": "b"}}}),
    )
    .await;
    let frozen = app
        .post_json("/v1/accounts/ann-eur/freeze", &json!({}))
        .await;
    assert_eq!(frozen.status, StatusCode::OK, "{}", frozen.body);
    let closed = app
        .post_json("/v1/accounts/bob-usd/close", &json!({}))
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.body);
    let since_ann_eur = ann_eur["created_at"].as_str().expect("created_at");

    let cases: [(String, &[&str]); 12] = [
        ("status=frozen".into(), &["ann-eur"]),
        ("status=closed".into(), &["bob-usd"]),
        ("status=active".into(), &["ann-usd", "cy-usd"]),
        ("currency=EUR".into(), &["ann-eur"]),
        ("currency=USD&status=active".into(), &["ann-usd", "cy-usd"]),
        ("currency=JPY".into(), &[]),
        ("metadata.owner=ann".into(), &["ann-eur", "ann-usd"]),
        ("metadata.owner=ann&metadata.tier=gold".into(), &["ann-usd"]),
        ("metadata.tier=gold&status=closed".into(), &["bob-usd"]),
        // Strings only: the number 3 is not the text "3"; only top-level keys.
        ("metadata.tier=3".into(), &[]),
        (
            format!("created_after={since_ann_eur}"),
            &["bob-usd", "cy-usd"],
        ),
        (
            format!("created_after={since_ann_eur}&metadata.tier=gold"),
            &["bob-usd"],
        ),
    ];
    for (query, expected) in cases {
        let (ids, _) = list_all_as(&app, &app.api_key, &query).await;
        assert_eq!(ids, expected, "{query}");
    }
    // Filters page like the plain listing.
    let (ids, pages) = list_all_as(&app, &app.api_key, "status=active&limit=1").await;
    assert_eq!(ids, ["ann-usd", "cy-usd"]);
    assert_eq!(pages, [1, 1, 0]);
    // An instant with an offset is the same instant.
    let (ids, _) = list_all_as(
        &app,
        &app.api_key,
        "created_after=2000-01-01T02:00:00%2B02:00",
    )
    .await;
    assert_eq!(ids.len(), 4);
    let (ids, _) = list_all_as(&app, &app.api_key, "metadata.nested.a=b").await;
    assert_eq!(ids, Vec::<String>::new());
}

#[tokio::test]
async fn a_ledger_bound_key_lists_only_its_own_ledgers_accounts() {
    let app = spawn_app().await;
    create_ledger(&app.pool, "shop").await;
    create_ledger(&app.pool, "cafe").await;
    app.create_account("cash", "USD", false).await;
    app.create_account("float", "USD", false).await;
    create_account_in(&app.pool, "shop", "cash", "USD", false).await;
    create_account_in(&app.pool, "shop", "till", "EUR", false).await;
    let shop = create_ledger_key(&app.pool, "shop", "accounts:read").await;
    let cafe = create_ledger_key(&app.pool, "cafe", "accounts:read").await;

    let (ids, _) = list_all_as(&app, &shop, "").await;
    assert_eq!(ids, ["cash", "till"]);
    let reply = app.get_as(&shop, "/v1/accounts").await;
    assert!(
        reply.body["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .all(|a| a["ledger"] == "shop"),
        "{}",
        reply.body
    );
    let (ids, _) = list_all_as(&app, &shop, "ledger=shop&currency=EUR").await;
    assert_eq!(ids, ["till"]);
    // Another ledger's key sees none of them, whatever it filters on.
    for query in ["", "currency=USD", "status=active", "after=a"] {
        let (ids, _) = list_all_as(&app, &cafe, query).await;
        assert_eq!(ids, Vec::<String>::new(), "{query}");
    }
    // Naming another ledger is refused; an admin names any.
    let reply = app.get_as(&shop, "/v1/accounts?ledger=default").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert_eq!(reply.body["code"], "ledger_forbidden");
    let (ids, _) = list_all_as(&app, &app.api_key, "").await;
    assert_eq!(ids, ["cash", "float"]);
    let (ids, _) = list_all_as(&app, &app.api_key, "ledger=shop").await;
    assert_eq!(ids, ["cash", "till"]);
    // Listing needs accounts:read, as reading one account does.
    let writer = create_ledger_key(&app.pool, "shop", "transfers:read,accounts:write").await;
    let reply = app.get_as(&writer, "/v1/accounts").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert_eq!(reply.body["code"], "forbidden");
}

#[tokio::test]
async fn bad_account_listing_queries_are_refused() {
    let app = spawn_app().await;
    app.create_account("a", "USD", false).await;
    let eleven: String = (0..11).map(|i| format!("&metadata.k{i}=v")).collect();
    let too_many = format!("?limit=1{eleven}");
    app.assert_bad_queries(
        "/v1/accounts",
        &[
            ("?status=paused", "invalid_body"),
            ("?status=", "invalid_body"),
            ("?status=active&status=frozen", "invalid_body"),
            ("?created_after=yesterday", "invalid_body"),
            ("?created_after=2026-12-01", "invalid_body"),
            ("?metadata.=ann", "invalid_body"),
            ("?metadata.owner=ann&metadata.owner=bob", "invalid_body"),
            (&too_many, "invalid_body"),
            ("?metadata.owner=a%00n", "invalid_body"),
            ("?after=a%00", "invalid_body"),
            ("?after=a%20b", "invalid_body"),
            ("?after=", "invalid_body"),
            ("?limit=0", "invalid_body"),
            ("?limit=1001", "invalid_body"),
            ("?limit=-1", "invalid_body"),
            ("?limit=ten", "invalid_body"),
            ("?owner=ann", "invalid_body"),
            ("?currency=usd", "invalid_currency"),
            ("?currency=XAU", "invalid_currency"),
            ("?ledger=Shop!", "invalid_ledger"),
        ],
    )
    .await;
}

#[tokio::test]
async fn ferry_account_list_prints_a_ledgers_filtered_accounts() {
    let app = spawn_app().await;
    create_ledger(&app.pool, "shop").await;
    open_account(
        &app,
        json!({"id": "ann", "currency": "USD", "metadata": {"owner": "ann"}}),
    )
    .await;
    open_account(&app, json!({"id": "bob", "currency": "USD"})).await;
    open_account(
        &app,
        json!({"id": "cy", "currency": "EUR", "metadata": {"owner": "ann"}}),
    )
    .await;
    create_account_in(&app.pool, "shop", "ann", "USD", false).await;
    let frozen = app.post_json("/v1/accounts/bob/freeze", &json!({})).await;
    assert_eq!(frozen.status, StatusCode::OK, "{}", frozen.body);

    let ids = |output: &std::process::Output| -> Vec<String> {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let all = crate::keys::ferry_cli(&app, &["account", "list"]).await;
    assert_eq!(ids(&all), ["ann", "bob", "cy"]);
    let header = String::from_utf8_lossy(&all.stdout);
    assert!(header.starts_with("ID  "), "{header}");
    assert!(header.contains("frozen"), "{header}");
    let args = ["account", "list", "--status", "frozen"];
    assert_eq!(ids(&crate::keys::ferry_cli(&app, &args).await), ["bob"]);
    let args = [
        "account",
        "list",
        "--metadata",
        "owner=ann",
        "--currency",
        "EUR",
    ];
    assert_eq!(ids(&crate::keys::ferry_cli(&app, &args).await), ["cy"]);
    let args = ["account", "list", "--ledger", "shop"];
    assert_eq!(ids(&crate::keys::ferry_cli(&app, &args).await), ["ann"]);
    let refused = crate::keys::ferry_cli(&app, &["account", "list", "--metadata", "owner"]).await;
    assert!(!refused.status.success());
    let refused = crate::keys::ferry_cli(&app, &["account", "list", "--status", "paused"]).await;
    assert!(!refused.status.success());
}
