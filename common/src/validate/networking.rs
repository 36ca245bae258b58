//! Validation of VirtualService and DestinationRule specs, following the rules Istio's own
//! validation webhook applies (value ranges, one-of fields, redirect codes, RE2 regexes).

use std::collections::HashSet;

use super::Checker;
use crate::diagnostic::{codes, Severity};
use crate::istio::networking::{
    ConnectionPoolSettings, DestinationRuleSpec, HttpRoute, LoadBalancerSettings, OutlierDetection,
    StringMatch, TrafficPolicy, VirtualServiceSpec,
};

pub(super) fn virtual_service(spec: &VirtualServiceSpec, c: &mut Checker) {
    if spec.hosts.is_empty() {
        c.error("spec.hosts", "at least one host is required");
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        if h.is_empty() {
            c.error(format!("spec.hosts[{i}]"), "host must not be empty");
        }
    }
    c.unimplemented(&spec.tcp, || "spec.tcp".into());
    c.unimplemented(&spec.tls, || "spec.tls".into());
    for (i, route) in spec.http.iter().enumerate() {
        http_route(route, &format!("spec.http[{i}]"), c);
    }
}

fn http_route(r: &HttpRoute, p: &str, c: &mut Checker) {
    c.unimplemented(&r.cors_policy, || format!("{p}.corsPolicy"));
    c.unimplemented(&r.delegate, || format!("{p}.delegate"));
    if r.route.is_empty()
        && r.redirect.is_none()
        && r.direct_response.is_none()
        && r.delegate.is_none()
    {
        c.error(p, "one of route, redirect or directResponse is required");
    }
    if r.redirect.is_some() && !r.route.is_empty() {
        c.error(p, "route and redirect cannot both be set");
    }
    if r.direct_response.is_some() && (!r.route.is_empty() || r.redirect.is_some()) {
        c.error(
            p,
            "directResponse cannot be combined with route or redirect",
        );
    }
    if r.redirect.is_some() && r.rewrite.is_some() {
        c.error(p, "rewrite cannot be combined with redirect");
    }
    for (j, m) in r.matches.iter().enumerate() {
        let mp = format!("{p}.match[{j}]");
        for (name, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                string_match(sm, &format!("{mp}.{name}"), false, c);
            }
        }
        for (field, map) in [
            ("headers", &m.headers),
            ("queryParams", &m.query_params),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (k, sm) in map {
                string_match(sm, &format!("{mp}.{field}.{k}"), true, c);
            }
        }
        if let Some(port) = m.port.filter(|p| *p == 0 || *p > 65535) {
            c.error(
                format!("{mp}.port"),
                format!("port {port} is outside 1..=65535"),
            );
        }
    }
    let mut total = 0i64;
    for (j, d) in r.route.iter().enumerate() {
        let dp = format!("{p}.route[{j}]");
        if d.destination.host.is_empty() {
            c.error(
                format!("{dp}.destination.host"),
                "required field is missing",
            );
        }
        if let Some(port) = &d.destination.port {
            if port.number == 0 || port.number > 65535 {
                c.error(
                    format!("{dp}.destination.port.number"),
                    format!("port {} is outside 1..=65535", port.number),
                );
            }
        }
        match d.weight {
            Some(w) if !(0..=100).contains(&w) => {
                c.error(
                    format!("{dp}.weight"),
                    format!("weight {w} is outside [0, 100]"),
                );
            }
            Some(w) => total += w,
            None => {}
        }
    }
    let all_in_range = r
        .route
        .iter()
        .all(|d| d.weight.is_none_or(|w| (0..=100).contains(&w)));
    if r.route.len() > 1 && all_in_range && total != 100 {
        c.push(
            Severity::Warning,
            codes::WEIGHTS_NOT_100,
            format!("{p}.route"),
            format!("destination weights sum to {total}, not 100; traffic is split in proportion to them"),
        );
    }
    if let Some(rd) = &r.redirect {
        if let Some(code) = rd
            .redirect_code
            .filter(|c| ![301, 302, 303, 307, 308].contains(c))
        {
            c.error(
                format!("{p}.redirect.redirectCode"),
                format!("redirect code {code} is not one of 301, 302, 303, 307, 308"),
            );
        }
    }
    if let Some(dr) = &r.direct_response {
        if !(200..=599).contains(&dr.status) {
            c.error(
                format!("{p}.directResponse.status"),
                format!("status {} is outside [200, 599]", dr.status),
            );
        }
        c.unimplemented(&dr.body, || format!("{p}.directResponse.body"));
    }
    if let Some(rw) = &r.rewrite {
        c.unimplemented(&rw.uri_regex_rewrite, || {
            format!("{p}.rewrite.uriRegexRewrite")
        });
    }
    if let Some(rt) = &r.retries {
        if rt.attempts < 0 {
            c.error(
                format!("{p}.retries.attempts"),
                format!("attempts must not be negative (got {})", rt.attempts),
            );
        }
        c.unimplemented(&rt.retry_remote_localities, || {
            format!("{p}.retries.retryRemoteLocalities")
        });
    }
    if let Some(f) = &r.fault {
        if let Some(d) = &f.delay {
            let fp = format!("{p}.fault.delay");
            c.unimplemented(&d.exponential_delay, || format!("{fp}.exponentialDelay"));
            if d.fixed_delay.is_none() && d.exponential_delay.is_none() {
                c.error(format!("{fp}.fixedDelay"), "required field is missing");
            }
            if let Some(pct) = &d.percentage {
                c.percent(pct.value, || format!("{fp}.percentage.value"));
            }
            if let Some(pct) = d.percent {
                c.percent(pct as f64, || format!("{fp}.percent"));
            }
            c.deprecated(&d.percent, || format!("{fp}.percent"), "percentage.value");
        }
        if let Some(a) = &f.abort {
            let fp = format!("{p}.fault.abort");
            c.unimplemented(&a.http2_error, || format!("{fp}.http2Error"));
            c.unimplemented(&a.grpc_status, || format!("{fp}.grpcStatus"));
            match a.http_status {
                Some(s) if !(200..=599).contains(&s) => {
                    c.error(
                        format!("{fp}.httpStatus"),
                        format!("status {s} is outside [200, 599]"),
                    );
                }
                None if a.grpc_status.is_none() && a.http2_error.is_none() => {
                    c.error(format!("{fp}.httpStatus"), "required field is missing");
                }
                _ => {}
            }
            if let Some(pct) = &a.percentage {
                c.percent(pct.value, || format!("{fp}.percentage.value"));
            }
        }
    }
    if let Some(m) = &r.mirror {
        if m.host.is_empty() {
            c.error(format!("{p}.mirror.host"), "required field is missing");
        }
    }
    if let Some(pct) = &r.mirror_percentage {
        c.percent(pct.value, || format!("{p}.mirrorPercentage.value"));
    }
    c.deprecated(
        &r.mirror_percent,
        || format!("{p}.mirrorPercent"),
        "mirrorPercentage",
    );
}

/// Istio `StringMatch`: at most one of exact/prefix/regex; `allow_empty` for header and query
/// matches where `{}` means "present".
fn string_match(m: &StringMatch, p: &str, allow_empty: bool, c: &mut Checker) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        c.error(p, "only one of exact, prefix or regex may be set");
    } else if set == 0 && !allow_empty {
        c.error(p, "one of exact, prefix or regex is required");
    }
    if let Some(re) = &m.regex {
        // Envoy uses RE2; the `regex` crate accepts the same syntax (no backreferences or
        // lookaround), so what compiles here compiles there.
        if let Err(e) = regex::Regex::new(re) {
            let first = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("invalid")
                .trim()
                .to_string();
            c.error(
                format!("{p}.regex"),
                format!("invalid RE2 regex `{re}`: {first}"),
            );
        }
    }
}

pub(super) fn destination_rule(spec: &DestinationRuleSpec, c: &mut Checker) {
    if spec.host.is_empty() {
        c.error("spec.host", "required field is missing");
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(tp, "spec.trafficPolicy", c);
    }
    let mut names = HashSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let sp = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            c.error(format!("{sp}.name"), "required field is missing");
        } else if !names.insert(s.name.as_str()) {
            c.error(
                format!("{sp}.name"),
                format!("subset \"{}\" is defined twice", s.name),
            );
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(tp, &format!("{sp}.trafficPolicy"), c);
        }
    }
    c.unimplemented(&spec.workload_selector, || "spec.workloadSelector".into());
}

fn traffic_policy(tp: &TrafficPolicy, p: &str, c: &mut Checker) {
    c.unimplemented(&tp.tls, || format!("{p}.tls"));
    c.unimplemented(&tp.tunnel, || format!("{p}.tunnel"));
    c.unimplemented(&tp.proxy_protocol, || format!("{p}.proxyProtocol"));
    policy_parts(
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        p,
        c,
    );
    let mut ports = HashSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{p}.portLevelSettings[{i}]");
        match &pl.port {
            None => c.error(format!("{pp}.port"), "required field is missing"),
            Some(sel) if sel.number == 0 || sel.number > 65535 => c.error(
                format!("{pp}.port.number"),
                format!("port {} is not in 1-65535", sel.number),
            ),
            Some(sel) => {
                if !ports.insert(sel.number) {
                    c.error(
                        format!("{pp}.port.number"),
                        format!("port {} has more than one entry", sel.number),
                    );
                }
            }
        }
        c.unimplemented(&pl.tls, || format!("{pp}.tls"));
        policy_parts(
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            &pp,
            c,
        );
    }
}

/// The parts a traffic policy and its port-level entries share.
fn policy_parts(
    load_balancer: Option<&LoadBalancerSettings>,
    connection_pool: Option<&ConnectionPoolSettings>,
    outlier_detection: Option<&OutlierDetection>,
    p: &str,
    c: &mut Checker,
) {
    if let Some(lb) = load_balancer {
        let lp = format!("{p}.loadBalancer");
        c.unimplemented(&lb.consistent_hash, || format!("{lp}.consistentHash"));
        c.unimplemented(&lb.locality_lb_setting, || {
            format!("{lp}.localityLbSetting")
        });
        c.unimplemented(&lb.warmup_duration_secs, || {
            format!("{lp}.warmupDurationSecs")
        });
    }
    if let Some(cp) = connection_pool {
        if let Some(t) = &cp.tcp {
            let tp = format!("{p}.connectionPool.tcp");
            c.non_negative(t.max_connections, || format!("{tp}.maxConnections"));
            c.unimplemented(&t.tcp_keepalive, || format!("{tp}.tcpKeepalive"));
        }
        if let Some(h) = &cp.http {
            let hp = format!("{p}.connectionPool.http");
            c.non_negative(h.http1_max_pending_requests, || {
                format!("{hp}.http1MaxPendingRequests")
            });
            c.non_negative(h.http2_max_requests, || format!("{hp}.http2MaxRequests"));
            c.non_negative(h.max_requests_per_connection, || {
                format!("{hp}.maxRequestsPerConnection")
            });
            c.non_negative(h.max_retries, || format!("{hp}.maxRetries"));
            c.non_negative(h.max_concurrent_streams, || {
                format!("{hp}.maxConcurrentStreams")
            });
            if let Some(policy) = h.h2_upgrade_policy.as_deref() {
                if !["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"].contains(&policy) {
                    c.error(
                        format!("{hp}.h2UpgradePolicy"),
                        format!("unknown value `{policy}`, expected one of DEFAULT, DO_NOT_UPGRADE, UPGRADE"),
                    );
                }
            }
        }
    }
    if let Some(o) = outlier_detection {
        let op = format!("{p}.outlierDetection");
        c.non_negative(o.consecutive_errors, || format!("{op}.consecutiveErrors"));
        c.deprecated(
            &o.consecutive_errors,
            || format!("{op}.consecutiveErrors"),
            "consecutive5xxErrors or consecutiveGatewayErrors",
        );
        c.non_negative(o.consecutive_5xx_errors, || {
            format!("{op}.consecutive5xxErrors")
        });
        c.non_negative(o.consecutive_gateway_errors, || {
            format!("{op}.consecutiveGatewayErrors")
        });
        c.non_negative(o.consecutive_local_origin_failures, || {
            format!("{op}.consecutiveLocalOriginFailures")
        });
        for (name, v) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if let Some(v) = v {
                c.percent(v as f64, || format!("{op}.{name}"));
            }
        }
    }
}
