use ferry_api::device::{
    AppOutcome, AppRun, CheckinAnswer, DeviceConfig, DeviceState, EnrollRequest, Enrolled, Report, Strategy,
};
use ferry_api::ErrorBody;

use crate::check;

#[test]
fn enrollment() {
    check(
        &EnrollRequest { csr: None, enrollment_token: "fe_1".into(), hardware: "rev-a".into(), serial: "SN-1".into() },
        r#"{"enrollment_token":"fe_1","hardware":"rev-a","serial":"SN-1"}"#,
    );
    check(
        &Enrolled { certificate: None, device_token: "fd_1".into(), state: Some(DeviceState::Accepted) },
        r#"{"device_token":"fd_1","state":"accepted"}"#,
    );
    check(
        &Enrolled { certificate: None, device_token: "fd_2".into(), state: Some(DeviceState::Pending) },
        r#"{"device_token":"fd_2","state":"pending"}"#,
    );
    // The server names what it does not take.
    let e = serde_json::from_str::<EnrollRequest>(r#"{"serial":"a","hardware":"b","enrollment_token":"c","x":1}"#);
    assert!(e.unwrap_err().to_string().contains("unknown field `x`"));
}

#[test]
fn a_report_writes_every_field_and_reads_what_it_knows() {
    let report = Report {
        agent_version: Some("0.1.0".into()),
        app: Some(AppRun {
            strategy: Strategy::HandOver,
            outcome: AppOutcome::Switched,
            strategy_source: Some("the release's metadata".into()),
            downtime_ms: Some(12),
            killed: false,
            vetoed_seconds: 3,
            veto_overruled: false,
            at: 1_800_000_000,
        }),
        channel: Some("stable".into()),
        config_error: None,
        config_version: Some(3),
        current: Some("ab".into()),
        current_version: Some("1.2".into()),
        dev: Some(false),
        free_bytes: Some(1000),
        last_error: Some("disk full".into()),
        last_result: Some("failed".into()),
        pinned: Some(false),
        previous: None,
        progress: Some(40),
        trial: Some("none".into()),
        uptime: Some(77),
    };
    check(
        &report,
        r#"{"agent_version":"0.1.0","app":{"strategy":"hand-over","outcome":"switched","strategy_source":"the release's metadata","downtime_ms":12,"killed":false,"vetoed_seconds":3,"veto_overruled":false,"at":1800000000},"channel":"stable","config_error":null,"config_version":3,"current":"ab","current_version":"1.2","dev":false,"free_bytes":1000,"last_error":"disk full","last_result":"failed","pinned":false,"previous":null,"progress":40,"trial":"none","uptime":77}"#,
    );
    check(
        &Report::default(),
        r#"{"agent_version":null,"app":null,"channel":null,"config_error":null,"config_version":null,"current":null,"current_version":null,"dev":null,"free_bytes":null,"last_error":null,"last_result":null,"pinned":null,"previous":null,"progress":null,"trial":null,"uptime":null}"#,
    );
    // Every field is optional, and a newer agent's fields are ignored.
    assert_eq!(serde_json::from_str::<Report>("{}").unwrap(), Report::default());
    let newer: Report = serde_json::from_str(r#"{"serial":"SN-B","uptime":5}"#).unwrap();
    assert_eq!(newer, Report { uptime: Some(5), ..Report::default() });
    // An application run of a shape this version does not know is no report error.
    let odd: Report = serde_json::from_str(r#"{"app":{"strategy":"teleport"},"uptime":5}"#).unwrap();
    assert_eq!(odd, Report { uptime: Some(5), ..Report::default() });
}

#[test]
fn a_check_in_answer() {
    let answer = CheckinAnswer {
        channel: Some("stable".into()),
        channel_document: Some("46525953".into()),
        config: Some(DeviceConfig { values: [("A".to_string(), "1".to_string())].into(), version: 3 }),
        config_document: Some("46525953".into()),
        serial: "SN-1".into(),
        state: Some(DeviceState::Accepted),
    };
    check(
        &answer,
        r#"{"channel":"stable","channel_document":"46525953","config":{"values":{"A":"1"},"version":3},"config_document":"46525953","serial":"SN-1","state":"accepted"}"#,
    );
    let none = CheckinAnswer {
        channel: None,
        channel_document: None,
        config: Some(DeviceConfig::default()),
        config_document: None,
        ..answer
    };
    check(
        &none,
        r#"{"channel":null,"channel_document":null,"config":{"values":{},"version":0},"config_document":null,"serial":"SN-1","state":"accepted"}"#,
    );
    // A server older than configuration sends none; one older than signed configuration
    // sends no document.
    let old: CheckinAnswer =
        serde_json::from_str(r#"{"channel":null,"channel_document":null,"serial":"SN-1","state":"accepted"}"#).unwrap();
    assert_eq!((old.config, old.config_document), (None, None));
}

#[test]
fn a_device_reads_a_newer_servers_answers() {
    // A state this version does not know, no serial, a configuration of another shape and a
    // field it has never heard of: the device still gets its channel document and goes on.
    let newer: CheckinAnswer = serde_json::from_str(
        r#"{"channel":"stable","channel_document":"46525953","config":{"layers":[]},"state":"retired","x":1}"#,
    )
    .unwrap();
    assert_eq!(newer.channel_document.as_deref(), Some("46525953"));
    let odd: CheckinAnswer =
        serde_json::from_str(r#"{"channel":null,"channel_document":null,"config_document":{"signed":[]}}"#).unwrap();
    assert_eq!(odd.config_document, None);
    assert_eq!((newer.config, newer.state, newer.serial.as_str()), (None, None, ""));
    let enrolled: Enrolled = serde_json::from_str(r#"{"device_token":"fd_3","state":"retired"}"#).unwrap();
    assert_eq!((enrolled.device_token.as_str(), enrolled.state), ("fd_3", None));
    // What it understands it still reads exactly.
    let known: CheckinAnswer = serde_json::from_str(
        r#"{"channel":null,"channel_document":null,"config":{"values":{"A":"1"},"version":3},"serial":"SN-1","state":"revoked"}"#,
    )
    .unwrap();
    assert_eq!(known.state, Some(DeviceState::Revoked));
    assert_eq!(known.config.map(|c| c.version), Some(3));
}

#[test]
fn an_error() {
    check(&ErrorBody::new("no device SN-9"), r#"{"error":"no device SN-9"}"#);
}
