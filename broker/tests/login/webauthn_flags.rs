//! WA-05, WA-06, WA-08: the fields of the authenticator data. A forged
//! authenticator ([`Forger`]) signs every assertion properly, so each
//! refusal is for the field under test (RP id hash, user presence, backup
//! eligibility), and each success shows what the broker stores.

use palisade_broker::audit::EventKind;
use palisade_broker::db::credentials;
use serde_json::json;

use crate::forge::{BE, BS, Forger, UP, UV};
use crate::support::{Browser, Idp, Key, Resp, TestBroker, auth_finish, auth_start, mfa_mode};
use crate::webauthn_cases::at_mfa;

/// A registration answer whose client data is the software authenticator's
/// genuine one, re-made by `forger` with `flags`, posted in `browser`'s sign-in.
async fn forged_registration(broker: &TestBroker, browser: &Browser, forger: &Forger, flags: u8) -> Resp {
    let start = browser.post_json(&broker.url("/login/webauthn/register/start"), &json!({})).await;
    assert_eq!(start.status, 200, "{}", start.body);
    let genuine = Key::new().register(&broker.origin(), serde_json::from_str(&start.body).unwrap());
    let reg = forger.registration(&genuine, flags);
    browser.post_json(&broker.url("/login/webauthn/register/finish"), &reg).await
}

/// First sign-in of `user`, registering `forger`'s key. Returns the person's id.
async fn forged_sign_up(broker: &TestBroker, user: &str, forger: &Forger) -> String {
    let browser = broker.browser();
    assert_eq!(mfa_mode(&browser.sign_in(&broker.url("/login"), user).await), "register");
    let r = forged_registration(broker, &browser, forger, UP | UV).await;
    assert_eq!(r.status, 200, "{}", r.body);
    sqlx::query_scalar("SELECT identity_id FROM users WHERE subject = $1")
        .bind(user)
        .fetch_one(broker.db.pool())
        .await
        .unwrap()
}

/// A sign-in of `user` up to the passkey, answered by `forger` over `rp_id` with `flags`.
async fn sign_in(broker: &TestBroker, user: &str, forger: &mut Forger, rp_id: &str, flags: u8) -> Resp {
    let browser = at_mfa(broker, user).await;
    let rcr = auth_start(&browser, broker).await;
    let cred = forger.assertion(&broker.origin(), &rcr, rp_id, flags);
    auth_finish(&browser, broker, &cred).await
}

async fn last_failure(broker: &TestBroker) -> String {
    broker.events(EventKind::LoginFailed).await.remove(0)["reason"].as_str().unwrap().to_owned()
}

/// (backup eligible, backup state, counter) as stored for the person's one credential.
async fn stored_flags(broker: &TestBroker, id: &str) -> (bool, bool, u64) {
    let cred = credentials::all_for(&broker.db, id).await.unwrap().remove(0);
    let form = serde_json::to_value(&cred.passkey).unwrap();
    let flag = |name: &str| form["cred"][name].as_bool().unwrap_or_else(|| panic!("no cred.{name} in {form}"));
    (flag("backup_eligible"), flag("backup_state"), cred.counter().unwrap())
}

#[tokio::test]
async fn wa_05_wa_06_another_rps_hash_or_no_user_presence_is_refused() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut forger = Forger::new();

    // A registration without user presence.
    let browser = broker.browser();
    assert_eq!(mfa_mode(&browser.sign_in(&broker.url("/login"), "alice").await), "register");
    let r = forged_registration(&broker, &browser, &forger, UV).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(last_failure(&broker).await, "user_not_present");
    assert_eq!(broker.count("SELECT COUNT(*) FROM webauthn_credentials").await, 0);

    let alice = forged_sign_up(&broker, "alice", &forger).await;
    for (rp_id, flags, reason) in [
        ("evil.example", UP | UV, "rp_id"),
        ("localhost.evil.example", UP | UV, "rp_id"),
        ("localhost", UV, "user_not_present"),
        ("localhost", 0, "user_not_present"),
    ] {
        let r = sign_in(&broker, "alice", &mut forger, rp_id, flags).await;
        assert_eq!(r.status, 401, "{rp_id} {flags:#04x}: {}", r.body);
        assert_eq!(last_failure(&broker).await, reason, "{rp_id} {flags:#04x}");
    }
    assert_eq!(broker.sessions().await, 1, "only the sign-up's session");
    assert_eq!(stored_flags(&broker, &alice).await.2, 0, "no refused assertion moved the counter");
    // The same authenticator, over our RP id and present: accepted.
    let r = sign_in(&broker, "alice", &mut forger, "localhost", UP | UV).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn wa_08_backup_flags_and_counter_are_stored_after_each_sign_in() {
    let broker = TestBroker::start(Idp::Real, |_| {}).await;
    let mut forger = Forger::new();
    let alice = forged_sign_up(&broker, "alice", &forger).await;
    assert_eq!(stored_flags(&broker, &alice).await, (false, false, 0));
    // (flags of the assertion, answer, what is stored afterwards). The
    // forger's counter counts every assertion, refused ones included.
    let steps = [
        (UP | UV | BE, 200, (true, false, 1)),
        (UP | UV | BE | BS, 200, (true, true, 2)),
        // Once stored as backup eligible, a credential cannot drop it.
        (UP | UV, 401, (true, true, 2)),
        (UP | UV | BE, 200, (true, false, 4)),
    ];
    for (flags, status, after) in steps {
        let r = sign_in(&broker, "alice", &mut forger, "localhost", flags).await;
        assert_eq!(r.status, status, "{flags:#04x}: {}", r.body);
        assert_eq!(stored_flags(&broker, &alice).await, after, "{flags:#04x}");
    }
    broker.assert_failed("webauthn", "assertion_invalid").await;
    let detail = broker.events(EventKind::LoginFailed).await.remove(0)["detail"].clone();
    assert!(detail.as_str().unwrap().contains("CredentialBackupEligibilityInconsistent"), "{detail}");
}
