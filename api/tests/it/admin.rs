use ferry_api::admin::*;

use crate::check;

#[test]
fn tokens() {
    check(
        &TokenRequest { kind: TokenKind::Enrollment, name: "factory".into() },
        r#"{"kind":"enrollment","name":"factory"}"#,
    );
    check(&TokenCreated { token: "fa_1".into() }, r#"{"token":"fa_1"}"#);
    check(
        &vec![
            TokenRecord { kind: TokenKind::Admin, name: "ops".into(), created: 5 },
            TokenRecord { kind: TokenKind::Enrollment, name: "factory".into(), created: 6 },
        ],
        r#"[{"kind":"admin","name":"ops","created":5},{"kind":"enrollment","name":"factory","created":6}]"#,
    );
    check(&TokensRevoked { revoked: 2 }, r#"{"revoked":2}"#);
    for kind in [TokenKind::Admin, TokenKind::Enrollment, TokenKind::Device] {
        assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.as_str()));
    }
}

#[test]
fn sessions() {
    check(&SessionRequest { token: "fa_1".into() }, r#"{"token":"fa_1"}"#);
    assert!(!format!("{:?}", SessionRequest { token: "fa_secret".into() }).contains("secret"));
    assert!(serde_json::from_str::<SessionRequest>(r#"{"token":"fa_1","name":"x"}"#).is_err());
    check(
        &SessionInfo { csrf_token: "ab".into(), expires_in: 28800, name: "ops".into() },
        r#"{"csrf_token":"ab","expires_in":28800,"name":"ops"}"#,
    );
    check(&SignedOut { signed_out: true }, r#"{"signed_out":true}"#);
}

fn view() -> DeviceView {
    DeviceView {
        accepted_by: None,
        enrolled: 100,
        events: None,
        groups: vec!["lab".into()],
        hardware: "rev-a".into(),
        last_seen: Some(200),
        reenrollment: None,
        report: Report { channel: Some("stable".into()), ..Report::default() },
        serial: "SN-1".into(),
        state: DeviceState::Pending,
    }
}

const REPORT: &str = r#"{"agent_version":null,"app":null,"channel":"stable","config_error":null,"config_version":null,"current":null,"current_version":null,"dev":null,"free_bytes":null,"last_error":null,"last_result":null,"pinned":null,"previous":null,"progress":null,"trial":null,"uptime":null}"#;

#[test]
fn devices() {
    check(
        &vec![view()],
        &format!(
            r#"[{{"accepted_by":null,"enrolled":100,"groups":["lab"],"hardware":"rev-a","last_seen":200,"reenrollment":null,"report":{REPORT},"serial":"SN-1","state":"pending"}}]"#
        ),
    );
    let one = DeviceView {
        accepted_by: Some("admin:ops".into()),
        events: Some(vec![Event { at: 1, what: "enrolled".into() }]),
        reenrollment: Some(ReenrollmentView {
            at: 5,
            enrollment_token: "factory".into(),
            hardware: "rev-b".into(),
            request: "0123456789ab".into(),
        }),
        state: DeviceState::Accepted,
        ..view()
    };
    check(
        &one,
        &format!(
            r#"{{"accepted_by":"admin:ops","enrolled":100,"events":[{{"at":1,"what":"enrolled"}}],"groups":["lab"],"hardware":"rev-a","last_seen":200,"reenrollment":{{"at":5,"enrollment_token":"factory","hardware":"rev-b","request":"0123456789ab"}},"report":{REPORT},"serial":"SN-1","state":"accepted"}}"#
        ),
    );
}

#[test]
fn device_actions() {
    for a in DeviceAction::ALL {
        assert_eq!(DeviceAction::parse(a.as_str()), Some(a));
    }
    assert_eq!(DeviceAction::parse("config"), None);
    let answer =
        |reenrollment, removed, state| DeviceActionAnswer { reenrollment, removed, serial: "SN-1".into(), state };
    check(&answer(None, None, Some(DeviceState::Revoked)), r#"{"serial":"SN-1","state":"revoked"}"#);
    check(&answer(None, Some(true), None), r#"{"removed":true,"serial":"SN-1"}"#);
    check(
        &answer(Some(Settled::Approved), None, Some(DeviceState::Accepted)),
        r#"{"reenrollment":"approved","serial":"SN-1","state":"accepted"}"#,
    );
    check(
        &answer(Some(Settled::Rejected), None, Some(DeviceState::Pending)),
        r#"{"reenrollment":"rejected","serial":"SN-1","state":"pending"}"#,
    );
    check(&Approval { request: "0123456789ab".into() }, r#"{"request":"0123456789ab"}"#);
    check(&Groups { groups: vec!["b".into(), "a".into()] }, r#"{"groups":["b","a"]}"#);
    check(&DeviceGroups { groups: vec!["b".into()], serial: "SN-1".into() }, r#"{"groups":["b"],"serial":"SN-1"}"#);
}

#[test]
fn configuration() {
    let values = || [("A".to_string(), "1".to_string())].into_iter().collect();
    check(&ConfigLevel { version: 3, values: values() }, r#"{"version":3,"values":{"A":"1"}}"#);
    check(
        &MergedConfig { version: 3, values: values(), sources: [("A".to_string(), "group lab".to_string())].into() },
        r#"{"version":3,"values":{"A":"1"},"sources":{"A":"group lab"}}"#,
    );
    check(&ConfigChange { set: values(), unset: Vec::new() }, r#"{"set":{"A":"1"}}"#);
    check(&ConfigChange { set: Default::default(), unset: vec!["A".into()] }, r#"{"unset":["A"]}"#);
    check(&ConfigVersion { version: 4 }, r#"{"version":4}"#);
}

#[test]
fn rollouts() {
    for a in RolloutAction::ALL {
        assert_eq!(RolloutAction::parse(a.as_str()), Some(a));
    }
    assert_eq!(RolloutAction::parse("halt"), None);
    check(
        &RolloutRequest { group: None, max_failure_percent: Some(10), percent: Some(20) },
        r#"{"group":null,"max_failure_percent":10,"percent":20}"#,
    );
    check(&SetPercent { percent: 30 }, r#"{"percent":30}"#);
    // The server reads every action's body as a rollout request.
    let p: RolloutRequest = serde_json::from_str(&serde_json::to_string(&SetPercent { percent: 30 }).unwrap()).unwrap();
    assert_eq!(p, RolloutRequest { percent: Some(30), ..RolloutRequest::default() });
    let status = RolloutStatus {
        rollout: Rollout {
            channel: "stable".into(),
            base: "ab".into(),
            base_serial: 2,
            percent: 20,
            group: None,
            state: RolloutState::Paused,
            max_failure_percent: 10,
            halt_reason: Some("2 of 3 failed".into()),
            started: 7,
            started_seq: Some(9),
        },
        devices: 4,
        eligible: 4,
        took: 1,
        failed: 0,
        uncounted: 1,
    };
    check(
        &vec![status],
        r#"[{"channel":"stable","base":"ab","base_serial":2,"percent":20,"group":null,"state":"paused","max_failure_percent":10,"halt_reason":"2 of 3 failed","started":7,"started_seq":9,"devices":4,"eligible":4,"took":1,"failed":0,"uncounted":1}]"#,
    );
    for s in [RolloutState::Running, RolloutState::Paused, RolloutState::Aborted] {
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
    }
}

#[test]
fn audit() {
    check(
        &vec![AuditEntry {
            seq: 1,
            at: 2,
            who: "admin:ops".into(),
            action: "accept".into(),
            detail: "device SN-1".into(),
        }],
        r#"[{"seq":1,"at":2,"who":"admin:ops","action":"accept","detail":"device SN-1"}]"#,
    );
}

fn document(serial: u64, previous: Option<&str>) -> ChannelDocument {
    ChannelDocument {
        channel: "stable".into(),
        expires: 200,
        id: format!("d{serial}"),
        previous: previous.map(str::to_string),
        rollback: false,
        serial,
        targets: vec![ChannelTarget { commit: "ab".into(), hardware: "rev-a".into(), version: "1.2".into() }],
        timestamp: 100,
    }
}

const TARGETS: &str = r#"[{"commit":"ab","hardware":"rev-a","version":"1.2"}]"#;

#[test]
fn channels() {
    let first = format!(
        r#"{{"channel":"stable","expires":200,"id":"d1","previous":null,"rollback":false,"serial":1,"targets":{TARGETS},"timestamp":100}}"#
    );
    check(&document(1, None), &first);
    check(
        &Promoted { changed: true, document: document(2, Some("d1")) },
        &format!(
            r#"{{"changed":true,"channel":"stable","expires":200,"id":"d2","previous":"d1","rollback":false,"serial":2,"targets":{TARGETS},"timestamp":100}}"#
        ),
    );
    let listing = ChannelListing::new(document(2, Some("d1")), vec![document(2, Some("d1")), document(1, None)], None);
    assert_eq!((listing.serial, listing.history.len()), (2, 2));
    let second =
        r#"{"channel":"stable","expires":200,"id":"d2","previous":"d1","rollback":false,"serial":2,"targets":"#;
    check(
        &vec![listing],
        &format!(
            r#"[{{"channel":"stable","expires":200,"history":[{second}{TARGETS},"timestamp":100}},{first}],"id":"d2","previous":"d1","rollback":false,"serial":2,"targets":{TARGETS},"timestamp":100,"upstream":null}}]"#
        ),
    );
    check(
        &PromoteRequest { commit: Some("ab".into()), hardware: vec!["rev-a".into()], ..PromoteRequest::default() },
        r#"{"commit":"ab","from":null,"hardware":["rev-a"],"rollback":false,"force":false,"create":false,"expires":null}"#,
    );
    // The web UI sends only what it has; the rest takes its default.
    let from: PromoteRequest = serde_json::from_str(r#"{"from":"beta"}"#).unwrap();
    assert_eq!(from, PromoteRequest { from: Some("beta".into()), ..PromoteRequest::default() });
    let e = serde_json::from_str::<PromoteRequest>(r#"{"to":"stable"}"#);
    assert!(e.unwrap_err().to_string().contains("unknown field `to`"));
}
