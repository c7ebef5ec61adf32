//! The device API (`/v1/device/...`): enrollment with the fleet's enrollment token, and
//! check-in with a device token, whose answer carries the channel document the device gets
//! (the rollout decides which) and its merged configuration (signed for it with the
//! server's configuration key, or else the document the operator signed offline, if any). What it is not for: the rules
//! (`crate::fleet`) or the repository's routes.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use axum::{Json, Router};
use ferry_api::device::{CheckinAnswer, DeviceConfig, EnrollRequest, Report};

use super::{bearer, blocking, parse_json, ApiError, Shared};
use crate::connections::Connection;
use crate::fleet::{FleetError, Pick};

/// Enrollment; with a certificate request and a server that issues device certificates,
/// the answer carries one for the serial, bound to the device with its token.
async fn enroll(State(s): State<Shared>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: EnrollRequest = parse_json(&body, "enrollment request")?;
    let out = blocking(move || {
        // The certificate request is read and signed only after the token and the rate
        // limit let the enrollment through.
        let issue = || match (&s.certificates.issuer, &req.csr) {
            (Some(ca), Some(csr)) => ca
                .issue_device(csr, &req.serial)
                .map(Some)
                .map_err(|e| FleetError::BadRequest(format!("enrollment request: {e:#}"))),
            _ => Ok(None),
        };
        let (mut enrolled, certificate) =
            s.fleet.enroll_issuing(&req.serial, &req.hardware, &req.enrollment_token, issue)?;
        enrolled.certificate = certificate;
        Ok(enrolled)
    })
    .await?;
    Ok(Json(out).into_response())
}

async fn check_in(
    State(s): State<Shared>,
    conn: Option<Extension<Connection>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let presented = s.certificates.presented(conn.as_deref(), &headers);
    let token = bearer(&headers)?;
    let report: Report = parse_json(&body, "check-in report")?;
    let st = s.clone();
    let (device, config) = blocking(move || {
        let d = st.fleet.device_for(&token)?;
        st.certificates.check(&st.fleet, &d, presented)?;
        let d = st.fleet.check_in(&d, report)?;
        let config = st.fleet.merged_config(&d)?;
        Ok((d, config))
    })
    .await?;
    let channel = device.report.channel.clone();
    let document = match &channel {
        Some(c) => {
            let (st, c, d) = (s.clone(), c.clone(), device.clone());
            blocking(move || {
                let Some((head, bytes)) = st.documents.head(&c) else { return Ok(None) };
                match st.fleet.pick(&d, &c, &head)? {
                    Pick::Head => Ok(Some(bytes)),
                    // Never the head instead: the device must not slip past the rollout.
                    Pick::Base(id) => st.documents.by_id(&id).map(Some).ok_or_else(|| {
                        FleetError::Unavailable(format!("the rollout's base document {id} cannot be read"))
                    }),
                }
            })
            .await?
        }
        None => None,
    };
    let config_document = match &s.config_key {
        Some(key) => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            crate::fleet::sign_config(&[key], &device.serial, &config, now, crate::fleet::CONFIG_LIFETIME).map_err(
                |e| {
                    ApiError(
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("signing the configuration of device {}: {e}", device.serial),
                        None,
                    )
                },
            )?
        }
        None => {
            let (st, serial) = (s.clone(), device.serial.clone());
            blocking(move || st.fleet.signed_config(&serial)).await?
        }
    };
    Ok(Json(CheckinAnswer {
        channel,
        channel_document: document.map(hex::encode),
        config: Some(DeviceConfig { values: config.values, version: config.version }),
        config_document: config_document.map(hex::encode),
        serial: device.serial,
        state: Some(device.state),
    })
    .into_response())
}

/// The device API's routes.
pub(super) fn routes() -> Router<Shared> {
    Router::new().route("/v1/device/enroll", post(enroll)).route("/v1/device/checkin", post(check_in))
}
