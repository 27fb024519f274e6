//! The access log of a sidecar's outbound side: MeshConfig `accessLogFile` and
//! `accessLogEncoding` as istiod writes them (`FileAccessLogFromMeshConfig`), on the
//! connection managers, the TCP proxies and the virtual outbound listener.
//!
//! As in Istio, sidecars log only when `accessLogFile` is set (`/dev/stdout`, in TEXT or
//! JSON by `accessLogEncoding`); unset or `""`, nothing. Every entry carries `%UPSTREAM_CLUSTER_RAW%`
//! and `%RESPONSE_FLAGS%`, so a blocked connection reads `BlackHoleCluster` with `UH`, and
//! a blocked HTTP request the route `block_all` with status 502.
use super::super::pb;
use crate::config::mesh::{AccessLogEncoding, MeshConfig};
use crate::xds::pb::envoy::config::accesslog::v3 as accesslog;
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log::AccessLogFormat,
};
use crate::xds::pb::google::protobuf as wkt;

/// Name of Envoy's file access logger.
pub const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";
/// Where the log goes (the only `accessLogFile` served).
pub const STDOUT: &str = "/dev/stdout";

/// Istio's text format (`EnvoyTextLogFormat`).
pub const TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's JSON format (`EnvoyJSONLogFormatIstio`).
pub const JSON_FIELDS: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// The access log of the mesh's settings, if it is on.
pub fn file_access_log(mesh: &MeshConfig) -> Option<accesslog::AccessLog> {
    let encoding = match mesh.access_log {
        None | Some(None) => return None,
        Some(Some(e)) => e,
    };
    let format = match encoding {
        AccessLogEncoding::Text => core::SubstitutionFormatString {
            format: Some(core::substitution_format_string::Format::TextFormatSource(
                core::DataSource {
                    specifier: Some(core::data_source::Specifier::InlineString(
                        TEXT_FORMAT.to_string(),
                    )),
                    ..Default::default()
                },
            )),
            ..Default::default()
        },
        AccessLogEncoding::Json => core::SubstitutionFormatString {
            format: Some(core::substitution_format_string::Format::JsonFormat(
                wkt::Struct {
                    fields: JSON_FIELDS
                        .iter()
                        .map(|(k, v)| (k.to_string(), pb::string_value(v)))
                        .collect(),
                },
            )),
            ..Default::default()
        },
    };
    let file = FileAccessLog {
        path: STDOUT.to_string(),
        access_log_format: Some(AccessLogFormat::LogFormat(format)),
    };
    Some(accesslog::AccessLog {
        name: FILE_ACCESS_LOG.to_string(),
        filter: None,
        config_type: Some(accesslog::access_log::ConfigType::TypedConfig(pb::any(
            &file,
        ))),
    })
}

/// The listener's own access log (istiod's `listenerAccessLog`): only connections no
/// filter chain took (`NR`), which no filter logs.
pub fn listener_access_log(mesh: &MeshConfig) -> Option<accesslog::AccessLog> {
    let mut log = file_access_log(mesh)?;
    log.filter = Some(accesslog::AccessLogFilter {
        filter_specifier: Some(
            accesslog::access_log_filter::FilterSpecifier::ResponseFlagFilter(
                accesslog::ResponseFlagFilter {
                    flags: vec!["NR".to_string()],
                },
            ),
        ),
    });
    Some(log)
}
