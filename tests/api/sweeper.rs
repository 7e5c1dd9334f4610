//! The sweeper: one bad row never stops a pass, and re-drives are capped — past
//! `redrive_max` a transfer is marked stuck, listed for operators, and re-driven only by
//! an admin.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_row_the_sweeper_cannot_handle_does_not_stop_it_cancelling_the_others() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    // Nobody answers the Try: only the sweeper's timeout can cancel the transfer.
    settings.transfers.consumer_enabled = false;
    settings.transfers.direct_credit = false;
    settings.transfers.try_timeout_secs = 2;
    let app = deployment.spawn(settings).await;
    let (sender, receiver) = (app.user_on_shard("sw-a", 0), app.user_on_shard("sw-b", 1));
    app.funded_user(&sender, "EUR", "100").await;
    app.funded_user(&receiver, "EUR", "0").await;
    // A timed-out hold whose transfer id no router can place, written before the real
    // one so that a pass meets it first.
    let db = app.shard_db(0).await;
    let bogus = uuid::Uuid::new_v4();
    db.execute(
        "INSERT INTO transfers (transfer_id, from_user, to_user, currency, amount, route, state, try_deadline)
         VALUES ($1, $2, 'nobody', 'EUR', 1, 'cross_shard', 'trying', now() - interval '1 hour')",
        &[&bogus, &sender],
    )
    .await
    .expect("bogus transfer");
    db.execute(
        "INSERT INTO holds (transfer_id, account_id, amount, expires_at)
         SELECT $1, account_id, 1, now() - interval '1 hour' FROM accounts WHERE user_id = $2",
        &[&bogus, &sender],
    )
    .await
    .expect("bogus hold");
    let response = app.transfer(&app.user_token(&sender), &sender, &receiver, "EUR", "40", "t1").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = body(response).await["transfer_id"].as_str().expect("id").to_string();
    let done = app.wait_final(&id, WITHIN).await;
    assert_eq!((done["status"].as_str(), done["reason"].as_str()), (Some("cancelled"), Some("timeout")), "{done}");
    assert_eq!(app.wallet(&sender, "EUR").await["available"], "100", "the hold was released");
    db.execute("DELETE FROM holds WHERE transfer_id = $1", &[&bogus]).await.expect("clean up");
    db.execute("DELETE FROM transfers WHERE transfer_id = $1", &[&bogus]).await.expect("clean up");
    app.assert_verified().await;
}

async fn stuck_ids(app: &TestApp) -> Vec<String> {
    let page = body(app.get("/v1/admin/transfers?state=stuck", &app.admin()).await).await;
    page["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|t| t["transfer_id"].as_str())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_transfer_redriven_too_often_is_stuck_until_an_admin_redrives_it() {
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    settings.transfers.redrive_after_secs = 1;
    settings.transfers.redrive_max = 2;
    let app = deployment.spawn(settings).await;
    let (sender, receiver) = (app.user_on_shard("st-a", 0), app.user_on_shard("st-b", 1));
    app.funded_user(&sender, "EUR", "100").await;
    app.funded_user(&receiver, "EUR", "0").await;
    // The receiver's wallet is locked by someone else: its credit cannot be applied, so
    // the transfer does not move however often its DirectCredit is sent.
    let mut blocker = app.shard_db(1).await;
    let lock = blocker.transaction().await.expect("begin");
    lock.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", &[&receiver]).await.expect("lock wallet");

    let response = app.transfer(&app.user_token(&sender), &sender, &receiver, "EUR", "30", "s1").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = body(response).await["transfer_id"].as_str().expect("id").to_string();
    eventually(WITHIN, "the transfer to be listed as stuck", || async {
        stuck_ids(&app).await.contains(&id).then_some(())
    })
    .await;
    let view = app.get_transfer(&id).await;
    assert!(view["stuck_at"].is_string(), "{view}");
    assert_eq!(view["status"], "pending");
    let redrives = || async {
        let uuid: uuid::Uuid = id.parse().expect("uuid");
        let row =
            app.shard_db(0).await.query_one("SELECT redrives FROM transfers WHERE transfer_id = $1", &[&uuid]).await;
        row.expect("redrives").get::<_, i32>(0)
    };
    let at_cap = redrives().await;
    assert_eq!(at_cap, 3, "two re-emits, then the third pass marked it stuck");
    // Several sweep intervals later, nothing more was re-emitted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(redrives().await, at_cap, "a stuck transfer is left to an operator");
    // The recorder is process-wide: other tests may add to it, never take away.
    assert!(counter(&app, "shardwallet_transfers_stuck_total").await >= 1.0, "counted in a metric");

    let user =
        app.post(&format!("/v1/admin/transfers/{id}/redrive"), &app.user_token(&sender), &Value::Null, None).await;
    assert_problem(user, StatusCode::FORBIDDEN, "forbidden").await;
    let redriven = app.post(&format!("/v1/admin/transfers/{id}/redrive"), &app.admin(), &Value::Null, None).await;
    assert_eq!(redriven.status(), StatusCode::ACCEPTED);
    let redriven = body(redriven).await;
    assert!(redriven.get("stuck_at").is_none(), "{redriven}");
    assert!(!stuck_ids(&app).await.contains(&id));
    lock.rollback().await.expect("release the wallet");
    let done = app.wait_final(&id, WITHIN).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(app.balance(&receiver, "EUR").await, "30", "credited once");
    let again = app.post(&format!("/v1/admin/transfers/{id}/redrive"), &app.admin(), &Value::Null, None).await;
    assert_problem(again, StatusCode::CONFLICT, "transfer_final").await;
    let unknown = app.post("/v1/admin/transfers/nope/redrive", &app.admin(), &Value::Null, None).await;
    assert_problem(unknown, StatusCode::NOT_FOUND, "transfer_not_found").await;
    let bad = app.get("/v1/admin/transfers?state=bogus", &app.admin()).await;
    assert_problem(bad, StatusCode::BAD_REQUEST, "invalid_request").await;
    app.assert_verified().await;
}

async fn count(app: &TestApp, shard: usize, sql: &str, ids: &[uuid::Uuid]) -> i64 {
    app.shard_db(shard).await.query_one(sql, &[&ids]).await.expect("count").get(0)
}

#[tokio::test]
async fn final_transfers_and_payments_shed_their_guards_and_a_late_duplicate_still_changes_nothing() {
    use shardwallet::transfer::{
        messages::{Stage, TransferFacts},
        tcc,
    };
    let deployment = Deployment::new().await;
    let mut settings = deployment.settings();
    // The full protocol: every transfer leaves a hold on the sender and barriers on the receiver.
    settings.transfers.direct_credit = false;
    settings.transfers.prune_after_secs = 1;
    settings.payments.prune_after_secs = 1;
    let app = deployment.spawn(settings).await;
    let (sender, receiver, payer) =
        (app.user_on_shard("g-a", 0), app.user_on_shard("g-b", 1), app.user_on_shard("g-c", 2));
    app.funded_user(&sender, "EUR", "1000").await;
    app.funded_user(&receiver, "EUR", "0").await;
    app.funded_user(&payer, "EUR", "1000").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let r = app.transfer(&app.user_token(&sender), &sender, &receiver, "EUR", "10", &format!("g{n}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let id = body(r).await["transfer_id"].as_str().expect("id").to_string();
        assert_eq!(app.wait_final(&id, WITHIN).await["status"], "completed");
        ids.push(id.parse::<uuid::Uuid>().expect("uuid"));
    }
    let deposit = crate::payments::start(&app, "deposits", &payer, "1002", "gateway_a", "gd").await;
    let withdrawal = crate::payments::start(&app, "withdrawals", &payer, "300", "gateway_b", "gw").await;
    for id in [&deposit, &withdrawal] {
        assert_eq!(crate::payments::wait_final(&app, id).await["status"], "succeeded");
    }
    let payments: Vec<uuid::Uuid> = [&deposit, &withdrawal].iter().map(|id| id.parse().expect("uuid")).collect();
    eventually(WITHIN, "the guards of final transfers and payments to be pruned", || async {
        let left = count(&app, 0, "SELECT count(*) FROM holds WHERE transfer_id = ANY($1)", &ids).await
            + count(&app, 1, "SELECT count(*) FROM tcc_barriers WHERE transfer_id = ANY($1)", &ids).await
            + count(&app, 2, "SELECT count(*) FROM payment_events WHERE payment_id = ANY($1)", &payments).await
            + count(&app, 2, "SELECT count(*) FROM payment_holds WHERE payment_id = ANY($1)", &payments).await;
        (left == 0).then_some(())
    })
    .await;
    // The records stay, and they alone answer a stage that arrives late or twice.
    assert_eq!(count(&app, 1, "SELECT count(*) FROM incoming_transfers WHERE transfer_id = ANY($1)", &ids).await, 5);
    for id in &ids {
        let facts = TransferFacts {
            transfer_id: *id,
            from_user_id: sender.clone(),
            to_user_id: receiver.clone(),
            currency: "EUR".into(),
            amount: "10".into(),
            description: None,
        };
        for stage in [Stage::TryCredit, Stage::ConfirmCredit, Stage::Confirmed] {
            tcc::handle(&app.router, &facts.message(stage)).await.expect("a late duplicate is answered");
        }
    }
    assert_eq!(app.balance(&receiver, "EUR").await, "50", "credited once per transfer");
    assert_eq!(app.balance(&sender, "EUR").await, "950");
    assert_eq!(app.balance(&payer, "EUR").await, "1702");
    app.assert_verified().await;
}
