//! `verify` joins both sides of cross-shard transfers: clean, again and again, while
//! transfers are in flight; a credit with no sender, a completed sender with no credit
//! and a transit account that does not add up are each reported, naming what is wrong,
//! and `shardwallet verify` exits 1.
use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use rand::Rng;
use reqwest::StatusCode;
use shardwallet::domain::UserId;
use uuid::Uuid;

use crate::helpers::*;

const FINAL_WITHIN: Duration = Duration::from_secs(90);

/// Moves `amount` (signed: a credit is positive) between `user`'s wallet and the
/// shard's transit account in one posting of `kind`, as the TCC handlers post it, with
/// the wallet's snapshot moved along: every per-posting and per-wallet check still holds.
async fn post_transit_leg(db: &tokio_postgres::Client, kind: &str, reference: Uuid, user: &str, amount: &str) {
    let posted = db
        .execute(
            "WITH w AS (
                 UPDATE accounts SET balance = balance + $4::text::numeric
                 WHERE user_id = $3 AND currency = 'EUR' RETURNING account_id, balance
             ), t AS (
                 SELECT account_id FROM accounts WHERE system_name = 'transit' AND currency = 'EUR'
             ), p AS (
                 INSERT INTO postings (posting_id, kind, reference) VALUES (gen_random_uuid(), $1, $2)
                 RETURNING posting_id
             )
             INSERT INTO entries (entry_id, posting_id, account_id, amount, balance_after)
             SELECT gen_random_uuid(), p.posting_id, w.account_id, $4::text::numeric, w.balance FROM p, w
             UNION ALL
             SELECT gen_random_uuid(), p.posting_id, t.account_id, -($4::text::numeric), NULL FROM p, t",
            &[&kind, &reference, &user, &amount],
        )
        .await
        .expect("post a transit leg");
    assert_eq!(posted, 2, "two entries");
}

/// A fresh transfer id routed to `sender`'s shard, as the API makes them.
fn transfer_id_of(app: &TestApp, sender: &str) -> Uuid {
    app.router.new_id_for(&UserId::parse(sender).expect("user id")).uuid()
}

fn assert_only_cross_shard_problem(report: &shardwallet::ledger::verify::Report, id: Uuid, what: &str) {
    assert!(!report.ok, "verify saw nothing wrong:\n{report}");
    for shard in &report.shards {
        assert!(shard.problems.is_empty(), "the per-shard checks are not what finds it: {:?}", shard.problems);
    }
    assert_eq!(report.problems.len(), 1, "{report}");
    let problem = &report.problems[0];
    assert!(problem.contains(&id.to_string()) && problem.contains(what), "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_is_clean_every_time_while_cross_shard_transfers_are_in_flight() {
    let deployment = Deployment::new().await;
    let direct = deployment.spawn_default().await;
    // A second instance without direct credit: its transfers go through Try/Confirm, so
    // a sender is still `trying` while the audit reads it.
    let mut settings = deployment.settings();
    settings.transfers.direct_credit = false;
    let full = deployment.spawn(settings).await;
    let users: Vec<String> = (0..9).map(|i| direct.user_on_shard(&format!("v{i}"), i % SHARDS)).collect();
    for u in &users {
        direct.funded_user(u, "EUR", "10000").await;
    }

    let loaded = AtomicBool::new(false);
    let load = async {
        let tasks = (0..6).map(|task| {
            let (users, app) = (&users, if task % 2 == 0 { &direct } else { &full });
            async move {
                let mut ids = Vec::new();
                for n in 0..15 {
                    let (from, step, amount) = {
                        let mut rng = rand::thread_rng();
                        (rng.gen_range(0..users.len()), rng.gen_range(1..SHARDS), rng.gen_range(1..50))
                    };
                    // Users are placed round-robin: another shard is `step` places on.
                    let to = (from + step) % users.len();
                    let (from, to) = (&users[from], &users[to]);
                    let key = format!("load-{task}-{n}");
                    let token = app.user_token(from);
                    let r = app.transfer_retrying(&token, from, to, "EUR", &amount.to_string(), &key).await;
                    assert_eq!(r.status(), StatusCode::ACCEPTED, "cross-shard transfer {key}");
                    ids.push(body(r).await["transfer_id"].as_str().expect("id").to_string());
                }
                ids
            }
        });
        let ids: Vec<String> = futures::future::join_all(tasks).await.into_iter().flatten().collect();
        for id in &ids {
            assert_eq!(direct.wait_final(id, FINAL_WITHIN).await["status"], "completed");
        }
        loaded.store(true, Ordering::SeqCst);
        ids
    };
    let audit = async {
        let (mut runs, mut in_flight, mut rechecked) = (0, 0, 0);
        while !loaded.load(Ordering::SeqCst) {
            let report = direct.verify().await;
            assert!(report.ok, "verify reported a problem under load (run {runs}):\n{report}");
            in_flight += usize::from(!report.cross_shard.in_flight.is_empty());
            rechecked += report.cross_shard.rechecked;
            runs += 1;
        }
        (runs, in_flight, rechecked)
    };
    let (ids, (runs, in_flight, rechecked)) = tokio::join!(load, audit);
    eprintln!("verify under load: {runs} runs, {in_flight} saw transfers in flight, {rechecked} suspects read again");
    assert!(in_flight + rechecked > 0, "none of the {runs} audits ran while a transfer was in flight");

    let report = direct.assert_verified().await;
    assert_eq!(report.cross_shard.debited, ids.len(), "{report}");
    assert_eq!(report.cross_shard.credited, ids.len(), "{report}");
    assert!(report.cross_shard.in_flight.is_empty(), "{report}");
    for shard in &report.shards {
        let transit = &shard.transit["EUR"];
        assert_ne!(transit.sent, "0", "every shard sent some: {report}");
    }
}

#[tokio::test]
async fn a_receiver_credit_without_a_sender_is_reported_by_its_transfer_id() {
    let app = spawn_app().await;
    let alice = app.user_on_shard("alice", 0);
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let sent = body(app.transfer(&app.user_token(&alice), &alice, &bob, "EUR", "30", "real").await).await;
    let real = sent["transfer_id"].as_str().expect("id").to_string();
    assert_eq!(app.wait_final(&real, FINAL_WITHIN).await["status"], "completed");
    app.assert_verified().await;

    // A credit written the way the receiver's handler writes one (barrier, incoming
    // record, posting from transit), for a transfer no sender ever debited.
    let forged = transfer_id_of(&app, &alice);
    let db = app.shard_db(1).await;
    db.execute("INSERT INTO tcc_barriers (transfer_id, branch) VALUES ($1, 'confirm')", &[&forged])
        .await
        .expect("barrier");
    db.execute(
        "INSERT INTO incoming_transfers (transfer_id, from_user, to_user, currency, amount, state)
         VALUES ($1, $2, $3, 'EUR', 1000000, 'confirmed')",
        &[&forged, &alice, &bob],
    )
    .await
    .expect("incoming record");
    post_transit_leg(&db, "transfer_credit", forged, &bob, "1000000").await;

    let report = app.verify().await;
    assert_only_cross_shard_problem(&report, forged, "no shard has a sender transfer");
    assert_eq!(report.cross_shard.rechecked, 1, "{report}");
    let audit = body(app.get("/v1/admin/audit", &app.admin()).await).await;
    assert_eq!(audit["ok"], false);
    let problems = audit["cross_shard"]["problems"].as_array().expect("cross-shard problems");
    assert!(problems.iter().any(|p| p.as_str().is_some_and(|p| p.contains(&forged.to_string()))), "{audit}");
}

#[tokio::test]
async fn a_completed_transfer_whose_receiver_was_never_credited_makes_the_verify_command_fail() {
    let app = spawn_app().await;
    let alice = app.user_on_shard("alice", 2);
    let bob = app.user_on_shard("bob", 0);
    app.funded_user(&alice, "EUR", "100").await;
    app.funded_user(&bob, "EUR", "0").await;
    let config = std::env::temp_dir().join(format!("shardwallet-verify-{}.toml", Uuid::new_v4().simple()));
    let kafka = &app.settings.kafka;
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[shards]\nmap_path = \"{}\"\n[auth]\njwt_secret = \"{JWT_SECRET}\"\n\
             [kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{}\"\ngroup_id = \"{}\"\n",
            app.settings.shards.map_path, kafka.brokers, kafka.topic_prefix, kafka.group_id
        ),
    )
    .expect("write config");
    let verify = |json: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shardwallet"));
        command.args(["--config", &config.display().to_string(), "verify"]);
        if json {
            command.arg("--json");
        }
        let output = command.env("RUST_LOG", "error").output().expect("run shardwallet verify");
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (code, clean) = verify(false);
    assert_eq!(code, Some(0), "{clean}");

    // The sender's side of a transfer that completed (debited to transit, marked
    // completed) while the receiver's shard never credited anyone.
    let id = transfer_id_of(&app, &alice);
    let db = app.shard_db(2).await;
    db.execute(
        "INSERT INTO transfers (transfer_id, from_user, to_user, currency, amount, route, state, completed_at)
         VALUES ($1, $2, $3, 'EUR', 40, 'cross_shard', 'completed', now())",
        &[&id, &alice, &bob],
    )
    .await
    .expect("sender transfer");
    post_transit_leg(&db, "transfer_debit", id, &alice, "-40").await;

    assert_only_cross_shard_problem(&app.verify().await, id, "no shard credited the receiver");
    let (code, text) = verify(false);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&id.to_string()) && text.contains("verify: 1 problem(s) found"), "{text}");
    let (code, json) = verify(true);
    assert_eq!(code, Some(1), "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("verify --json");
    assert_eq!(report["cross_shard"]["problems"][0].as_str().map(|p| p.contains(&id.to_string())), Some(true));
    let _ = std::fs::remove_file(&config);
}

#[tokio::test]
async fn a_transit_account_that_is_not_sent_minus_received_is_reported() {
    let app = spawn_app().await;
    let bob = app.user_on_shard("bob", 1);
    app.funded_user(&bob, "EUR", "0").await;
    // Money out of transit under no transfer at all: no cross-shard record explains it.
    let db = app.shard_db(1).await;
    post_transit_leg(&db, "adjustment", Uuid::new_v4(), &bob, "50").await;
    let report = app.verify().await;
    assert!(!report.ok);
    assert_eq!(report.shards[1].transit["EUR"].balance, "-50", "{report}");
    assert!(report.problems.iter().any(|p| p.contains("transit EUR: balance -50") && p.contains("is 0")), "{report}");
}
