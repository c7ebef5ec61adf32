//! The fleet's decisions as the library makes them: which error kind each refusal is (the
//! API maps kinds to status codes, so a kind that changes is an API that changes). The
//! same rules over HTTP are in `fleet_attacks`, and from the command line in `fleet_cli`.

use ferry_fixtures::postgres::TestFleetStore;
use ferry_publisher::fleet::db::Location;
use ferry_publisher::fleet::{
    Caller, DeviceState, Fleet, FleetError, HeadDoc, Report, RolloutAction, Scope, Settings, TokenKind,
};

/// Where a test's fleet is kept (a directory, or PostgreSQL with `FERRY_TEST_FLEET_DB`).
struct Store {
    at: TestFleetStore,
    _dir: tempfile::TempDir,
}

/// A fresh fleet with an enrollment token.
fn fleet(settings: Settings) -> (Store, Fleet, String) {
    let t = tempfile::tempdir().unwrap();
    let at = TestFleetStore::new(&t.path().join("fleet")).unwrap();
    let f = Fleet::open(Location::parse(&at.at), settings).unwrap();
    let token = f.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap();
    (Store { at, _dir: t }, f, token)
}

/// `r` failed with the kind `kind` names.
#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, FleetError>, kind: fn(&FleetError) -> bool) {
    match r {
        Err(e) if kind(&e) => {}
        other => panic!("expected another refusal, got {other:?}"),
    }
}

#[test]
fn tokens_that_are_not_for_the_route_are_unauthorized() {
    let (_t, f, enrollment) = fleet(Settings::default());
    let admin = f.create_token(&Caller::Local, TokenKind::Admin, "ops").unwrap();
    refused(f.enroll("SN-1", "rev-a", &admin, None), |e| matches!(e, FleetError::Unauthorized(_)));
    let device = f.enroll("SN-1", "rev-a", &enrollment, None).unwrap().device_token;
    refused(f.admin(&device), |e| matches!(e, FleetError::Unauthorized(_)));
    refused(f.admin(&enrollment), |e| matches!(e, FleetError::Unauthorized(_)));
    refused(f.device_for(&admin), |e| matches!(e, FleetError::Unauthorized(_)));
    refused(f.reader(&enrollment), |e| matches!(e, FleetError::Unauthorized(_)));
    refused(f.device_for("fd_nothing"), |e| matches!(e, FleetError::Unauthorized(_)));
    assert_eq!(f.reader(&device).unwrap(), Caller::Device("SN-1".into()));
    assert_eq!(f.admin(&admin).unwrap(), Caller::Admin("ops".into()));
    refused(f.create_token(&Caller::Local, TokenKind::Device, "x"), |e| matches!(e, FleetError::BadRequest(_)));
    refused(f.revoke_token(&Caller::Local, "nobody"), |e| matches!(e, FleetError::NotFound(_)));
}

#[test]
fn pending_and_revoked_devices_are_forbidden() {
    let (_t, f, enrollment) = fleet(Settings { require_approval: true, ..Settings::default() });
    let enrolled = f.enroll("SN-1", "rev-a", &enrollment, None).unwrap();
    assert_eq!(enrolled.state, Some(DeviceState::Pending));
    refused(f.device_for(&enrolled.device_token), |e| matches!(e, FleetError::Forbidden(_)));
    refused(f.reader(&enrolled.device_token), |e| matches!(e, FleetError::Forbidden(_)));
    f.accept(&Caller::Local, "SN-1").unwrap();
    let device = f.device_for(&enrolled.device_token).unwrap();
    f.revoke(&Caller::Local, "SN-1").unwrap();
    refused(f.device_for(&enrolled.device_token), |e| matches!(e, FleetError::Forbidden(_)));
    refused(f.check_in(&device, Report::default()), |e| matches!(e, FleetError::Forbidden(_)));
    refused(f.enroll("SN-1", "rev-a", &enrollment, None), |e| matches!(e, FleetError::Forbidden(_)));
    // A revoked device stays revoked, and one that does not exist is not found.
    refused(f.accept(&Caller::Local, "SN-1"), |e| matches!(e, FleetError::BadRequest(_)));
    refused(f.accept(&Caller::Local, "SN-9"), |e| matches!(e, FleetError::NotFound(_)));
    refused(f.remove(&Caller::Local, "SN-9"), |e| matches!(e, FleetError::NotFound(_)));
}

#[test]
fn a_re_enrollment_waits_for_the_operator_and_a_newer_one_is_a_conflict() {
    let (_t, f, enrollment) = fleet(Settings::default());
    let first = f.enroll("SN-1", "rev-a", &enrollment, None).unwrap();
    refused(f.reject_reenrollment(&Caller::Local, "SN-1"), |e| matches!(e, FleetError::NotFound(_)));
    let again = f.enroll("SN-1", "rev-b", &enrollment, None).unwrap();
    assert_eq!(again.state, Some(DeviceState::Pending));
    // The new token works nowhere yet; the device's own still does.
    refused(f.device_for(&again.device_token), |e| matches!(e, FleetError::Forbidden(_)));
    f.device_for(&first.device_token).unwrap();
    let looked_at = f.device("SN-1").unwrap().reenrollment.unwrap().fingerprint().to_string();
    let newer = f.enroll("SN-1", "rev-c", &enrollment, None).unwrap();
    refused(f.approve_reenrollment(&Caller::Local, "SN-1", &looked_at), |e| matches!(e, FleetError::Conflict(_)));
    let current = f.device("SN-1").unwrap().reenrollment.unwrap().fingerprint().to_string();
    f.approve_reenrollment(&Caller::Local, "SN-1", &current).unwrap();
    refused(f.device_for(&first.device_token), |e| matches!(e, FleetError::Unauthorized(_)));
    assert_eq!(f.device_for(&newer.device_token).unwrap().hardware, "rev-c");
}

#[test]
fn an_enrollment_burst_past_the_limit_is_too_many() {
    let (_t, f, enrollment) = fleet(Settings { enrollments_per_minute: 2, ..Settings::default() });
    f.enroll("SN-1", "rev-a", &enrollment, None).unwrap();
    f.enroll("SN-2", "rev-a", &enrollment, None).unwrap();
    refused(f.enroll("SN-3", "rev-a", &enrollment, None), |e| {
        matches!(e, FleetError::TooMany { retry_after: 1.., .. })
    });
}

#[test]
fn bad_reports_configuration_and_names_are_bad_requests() {
    let (_t, f, enrollment) = fleet(Settings::default());
    let token = f.enroll("SN-1", "rev-a", &enrollment, None).unwrap().device_token;
    let device = f.device_for(&token).unwrap();
    let escape = Report { last_error: Some("\u{1b}[2J".into()), ..Report::default() };
    refused(f.check_in(&device, escape), |e| matches!(e, FleetError::BadRequest(_)));
    let long = Report { last_error: Some("x".repeat(4097)), ..Report::default() };
    refused(f.check_in(&device, long), |e| matches!(e, FleetError::BadRequest(_)));
    refused(f.check_in(&device, Report { progress: Some(101), ..Report::default() }), |e| {
        matches!(e, FleetError::BadRequest(_))
    });
    refused(f.enroll("bad serial!", "rev-a", &enrollment, None), |e| matches!(e, FleetError::BadRequest(_)));
    let set = |k: &str| vec![(k.to_string(), "v".to_string())];
    refused(f.set_config(&Caller::Local, &Scope::Fleet, &set("1X"), &[]), |e| matches!(e, FleetError::BadRequest(_)));
    refused(f.set_config(&Caller::Local, &Scope::Device("SN-9".into()), &set("X"), &[]), |e| {
        matches!(e, FleetError::NotFound(_))
    });
    refused(f.set_groups(&Caller::Local, "SN-1", &["a".into(), "a".into()]), |e| {
        matches!(e, FleetError::BadRequest(_))
    });
    assert_eq!(f.set_config(&Caller::Local, &Scope::Fleet, &set("X"), &[]).unwrap(), 1);
}

#[test]
fn rollout_changes_that_cannot_be_made_are_refused_by_kind() {
    let (_t, f, _) = fleet(Settings::default());
    let head = HeadDoc { id: format!("{:064x}", 1), serial: 1, targets: Default::default() };
    let change = |action, percent| f.change_rollout(&Caller::Local, "stable", action, percent);
    refused(change(RolloutAction::Pause, None), |e| matches!(e, FleetError::NotFound(_)));
    f.start_rollout(&Caller::Local, "stable", &head, 20, None, 10).unwrap();
    refused(f.start_rollout(&Caller::Local, "stable", &head, 30, None, 10), |e| matches!(e, FleetError::BadRequest(_)));
    refused(f.start_rollout(&Caller::Local, "beta", &head, 101, None, 10), |e| matches!(e, FleetError::BadRequest(_)));
    refused(change(RolloutAction::SetPercent, Some(10)), |e| matches!(e, FleetError::BadRequest(_)));
    refused(change(RolloutAction::SetPercent, None), |e| matches!(e, FleetError::BadRequest(_)));
    refused(change(RolloutAction::Start, None), |e| matches!(e, FleetError::NotFound(_)));
    assert_eq!(change(RolloutAction::SetPercent, Some(50)).unwrap().percent, 50);
    change(RolloutAction::Abort, None).unwrap();
    refused(change(RolloutAction::Resume, None), |e| matches!(e, FleetError::BadRequest(_)));
}

#[test]
fn a_second_process_cannot_open_the_embedded_store_and_replicas_share_postgres() {
    let (t, f, _) = fleet(Settings::default());
    let again = Fleet::open(Location::parse(&t.at.at), Settings::default());
    if t.at.is_postgres() {
        // Another replica: it sees what the first one wrote.
        let other = again.unwrap();
        other.create_token(&Caller::Local, TokenKind::Admin, "second").unwrap();
        let names: Vec<String> = f.tokens().unwrap().into_iter().map(|t| t.name).collect();
        assert!(names.contains(&"second".to_string()), "{names:?}");
    } else {
        refused(again, |e| matches!(e, FleetError::Store(ferry_store::StoreError::Locked { .. })));
    }
}
